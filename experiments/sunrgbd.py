"""SUN RGB-D (CosReg paper, section 5.2, Table 3): correlated coarse / fine segmentation and depth.

Tasks: 13-class and 37-class segmentation (label 0 = ignore in both) and depth, with SegNet. Without
``--data-dir`` the data are procedural indoor scenes with fine labels and their coarse grouping (every
output says so). With it: the reorganised layout (image / depth / label13 / label37 + list files).

    python -m experiments.sunrgbd                                  # quick preset on synthetic scenes
    python -m experiments.sunrgbd --preset paper --data-dir DIR --vgg16-weights vgg16_bn.npz
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

from experiments.cli import add_segnet_flags, build_parser, method_kwargs_from_args, settings_overrides
from experiments.dense import DENSE_ROWS, dense_benchmark, dwa_protocol
from experiments.paper_numbers import TABLE3_SUNRGBD
from experiments.pipeline import default_workdir, run_benchmark, run_command, setup_runtime
from experiments.runner import RunSettings, row_for
from orthojax.data import dense_augment, load_sunrgbd

ROWS = DENSE_ROWS
TABLE3_ROWS = tuple(ROWS)

PRESETS = {
    "quick": dict(sizes=(96, 48), image_size=(64, 64), target_size=(16, 16), width=1 / 16,
                  settings=RunSettings(epochs=3, batch_size=8, learning_rate=1e-3, seeds=(0,), eval_batch_size=16)),
    # the paper: 320x320 -> 80x80, batch 3, Adam 1e-4 x 0.5 every 2 epochs, 25 epochs, flips, alpha 10
    "paper": dict(sizes=(5285, 5050), image_size=(320, 320), target_size=(80, 80), width=1.0,
                  settings=RunSettings(epochs=25, batch_size=3, learning_rate=1e-4, seeds=(0,), eval_batch_size=3,
                                       lr_decay_every_epochs=2, lr_decay_factor=0.5)),
}

COLUMNS = (("seg13_err", "seg13 1-mIoU", 3), ("seg37_err", "seg37 1-mIoU", 3), ("depth_rmse", "depth RMSE", 3))
PAPER = {k: dict(zip(("seg13_err", "seg37_err", "depth_rmse"), v)) for k, v in TABLE3_SUNRGBD.items()}
TASK_COLUMNS = {"seg13": "seg13_err", "seg37": "seg37_err", "depth": "depth_rmse"}


def table_metrics(evaluation: Mapping[str, Any]) -> dict:
    """1 - mIoU of both segmentations and the depth RMSE, plus every field metric of the evaluation."""
    out = {}
    for key in ("seg13", "seg37"):
        if f"{key}/miou" in evaluation:
            out[f"{key}_err"] = 1.0 - evaluation[f"{key}/miou"]
    if "depth/rmse" in evaluation:
        out["depth_rmse"] = evaluation["depth/rmse"]
    out.update({k: v for k, v in evaluation.items() if "/" in k})
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser("python -m experiments.sunrgbd", __doc__.split("\n\n")[0], ROWS, TABLE3_ROWS,
                          default_alpha=10.0)
    parser.add_argument("--depth-format", choices=("png10000", "toolbox"), default="png10000",
                        help="depth PNG convention: metres = png / 10000, or the toolbox's bit shift / 1000")
    parser.add_argument("--no-flip", action="store_true", help="no horizontal-flip augmentation")
    add_segnet_flags(parser)
    args = parser.parse_args(argv)
    setup_runtime(args.distributed, args.compilation_cache)
    preset = PRESETS[args.preset]
    settings = dataclasses.replace(preset["settings"], **settings_overrides(args))
    splits, info = load_sunrgbd(args.data_dir, image_size=preset["image_size"], target_size=preset["target_size"],
                                depth_format=args.depth_format, synthetic_sizes=preset["sizes"], seed=0)
    width = args.width if args.width is not None else preset["width"]
    bench = dense_benchmark(
        "sunrgbd", splits, info, width=width, model_options={"use_batchnorm": not args.no_batchnorm},
        table_metrics=table_metrics, task_columns=TASK_COLUMNS,
        augment=None if args.no_flip else dense_augment(scales=(1.0,), flip=True), vgg16_weights=args.vgg16_weights)
    cli_kwargs = method_kwargs_from_args(args, default_alpha=10.0)
    rows = [row_for(key, ROWS, cli_kwargs, settings.recon_base) for key in args.methods]
    workdir = args.workdir or default_workdir("sunrgbd", args.preset)
    schedule = (f"x{settings.lr_decay_factor:g} every {settings.lr_decay_every_epochs} epochs"
                if settings.lr_decay_every_epochs else "constant")
    protocol = {"preset": args.preset, "epochs": settings.epochs, "batch size": settings.batch_size,
                "optimiser": f"Adam lr {settings.learning_rate:g} ({schedule})", "SegNet width": width,
                "VGG16 weights": args.vgg16_weights or "none (random init)",
                "augmentation": "none" if args.no_flip else "horizontal flips",
                **dwa_protocol(rows, settings, len(splits["train"]["image"])),
                "CosReg": f"alpha {cli_kwargs['cosreg']['alpha']:g}", "seeds": list(settings.seeds),
                "classes": info["num_classes"], "evaluated on": "test split, final epoch"}
    notes = list(info.get("notes", []))
    if info.get("synthetic"):
        notes.append("SYNTHETIC DATA: numbers are not comparable with the paper's; they exercise the full pipeline. "
                     "The 'seg37' task holds the synthetic scenes' fine classes, 'seg13' their NYU-13 grouping.")
    run_benchmark(bench, rows, settings, workdir, title="SUN RGB-D (Table 3)", columns=COLUMNS, paper=PAPER,
                  data_info=info, protocol=protocol, notes=notes)


if __name__ == "__main__":
    run_command(main)
