"""NYUv2 (CosReg paper, section 5.1, Table 2): segmentation, depth and surface normals with SegNet.

Without ``--data-dir`` the data are procedural indoor scenes (geometrically consistent RGB, depth, normals
and labels; every output says so). With it: the MTAN preprocessed layout (<root>/{train,val}/...) or the
official labelled .mat (see ``orthojax.data.load_nyuv2``).

    python -m experiments.nyuv2                                   # quick preset on synthetic scenes
    python -m experiments.nyuv2 --preset paper --data-dir DIR --vgg16-weights vgg16_bn.npz
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

from experiments.cli import add_segnet_flags, build_parser, method_kwargs_from_args, settings_overrides
from experiments.dense import DENSE_ROWS, dense_benchmark, dwa_protocol
from experiments.paper_numbers import TABLE2_NYUV2
from experiments.pipeline import default_workdir, run_benchmark, run_command, setup_runtime
from experiments.runner import RunSettings, row_for
from orthojax.data import dense_augment, load_nyuv2
from orthojax.metrics import NORMAL_MASKS, NYUV2_HIGHER_IS_BETTER, delta_m

ROWS = DENSE_ROWS
TABLE2_ROWS = tuple(ROWS)

PRESETS = {
    # synthetic scenes at 64x64 -> 16x16, SegNet at 1/16 width: the default command in minutes on a CPU
    "quick": dict(sizes=(96, 48), image_size=(64, 64), target_size=(16, 16), width=1 / 16,
                  settings=RunSettings(epochs=3, batch_size=8, learning_rate=1e-3, seeds=(0,), eval_batch_size=16)),
    # the paper: 320x320 -> 80x80, full SegNet, batch 2, Adam 1e-4 constant, 25 epochs, alpha 10 x mean loss
    "paper": dict(sizes=(795, 654), image_size=(320, 320), target_size=(80, 80), width=1.0,
                  settings=RunSettings(epochs=25, batch_size=2, learning_rate=1e-4, seeds=(0,), eval_batch_size=2)),
}

COLUMNS = (("seg_err", "seg 1-mIoU", 3), ("depth_rmse", "depth RMSE", 3), ("normal_err", "normal 1-|cos|", 3))
PAPER = {k: dict(zip(("seg_err", "depth_rmse", "normal_err"), v)) for k, v in TABLE2_NYUV2.items()}

# the field's nine metrics (MTAN / LibMTL / Nash-MTL), named as in orthojax.metrics
FIELD_METRICS = (("seg", "miou"), ("seg", "pixel_acc"), ("depth", "abs_err"), ("depth", "rel_err"),
                 ("normal", "angle_mean"), ("normal", "angle_median"), ("normal", "within_11.25"),
                 ("normal", "within_22.5"), ("normal", "within_30"))


def table_metrics(evaluation: Mapping[str, Any]) -> dict:
    """The paper's three errors and the field's metrics (pooled and per-batch) of one evaluation."""
    out = {}
    if "seg/miou" in evaluation:
        out["seg_err"] = 1.0 - evaluation["seg/miou"]
    if "depth/rmse" in evaluation:
        out["depth_rmse"] = evaluation["depth/rmse"]
    if "normal/one_minus_abs_cos" in evaluation:
        out["normal_err"] = evaluation["normal/one_minus_abs_cos"]
    for task, name in FIELD_METRICS:
        for prefix in (f"{task}/", f"{task}/batch/"):
            if prefix + name in evaluation:
                out[prefix + name] = evaluation[prefix + name]
    return out


def field_metric_keys(aggregation: str) -> list[str]:
    """Evaluation keys of the nine field metrics under ``aggregation``: "pooled" (LibMTL: every statistic
    over all test pixels) or "batch" (MTAN / Nash-MTL / CAGrad: depth and normal statistics averaged per
    test batch; segmentation from one confusion matrix over the whole test set in both)."""
    if aggregation not in ("pooled", "batch"):
        raise ValueError(f"aggregation must be 'pooled' or 'batch'; got {aggregation!r}")
    per_batch = aggregation == "batch"
    return [f"{t}/batch/{m}" if per_batch and t != "seg" else f"{t}/{m}" for t, m in FIELD_METRICS]


def field_section(summary: Sequence[Mapping]) -> tuple[str, dict]:
    """The nine field metrics per row and Delta_m% against our single-task row, both aggregations."""
    by = {e["row"]: e for e in summary}
    lines, payload = [], {}
    for aggregation, title in (("pooled", "pooled (LibMTL-style, exact over all test pixels)"),
                               ("batch", "per-batch means (MTAN-style: segmentation from the confusion matrix "
                                         "over the whole test set, depth and normals averaged per test batch)")):
        names = field_metric_keys(aggregation)
        head = ["Method"] + [n.split("/")[0] + " " + n.split("/")[-1] for n in names] + ["Δm% vs our single task"]
        lines += [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        base = by.get("single_task")
        for entry in summary:
            means = {n: entry["columns"].get(n, {}).get("mean") for n in names}
            cells = [entry["label"]] + ["-" if means[n] is None else f"{means[n]:.4f}" for n in names]
            dm = None
            if base is not None:
                ref = {n: base["columns"].get(n, {}).get("mean") for n in names}
                usable = [n for n in names if means[n] is not None and ref[n] not in (None, 0)]
                if usable:
                    dm = delta_m({n: means[n] for n in usable}, {n: ref[n] for n in usable},
                                 {n: NYUV2_HIGHER_IS_BETTER[n.split("/")[-1]] for n in usable})
            cells.append("-" if dm is None else f"{dm + 0.0:+.2f}")  # + 0.0: no "-0.00"
            payload.setdefault(aggregation, {})[entry["row"]] = {"metrics": means, "delta_m": dm}
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Δm% = mean over the metrics of (-1)^d (M - M_single) / M_single x 100 (d = 1 when higher is "
                 "better; lower Δm is better), against the single-task row of this same run. Reported at the "
                 "final epoch (neither the MTAN mean of the last 10 epochs nor LibMTL's best epoch).")
    return "\n".join(lines), payload


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser("python -m experiments.nyuv2", __doc__.split("\n\n")[0], ROWS, TABLE2_ROWS, default_alpha=10.0)
    parser.add_argument("--protocol", choices=("paper", "mtan"), default="paper",
                        help="paper: 14 classes (void = background), 80x80 targets; mtan: 13 classes, void ignored")
    parser.add_argument("--augment", action="store_true",
                        help="random scale-crop (1, 1.2, 1.5; depth / s) and horizontal flips (normal x negated)")
    parser.add_argument("--normal-mask", choices=NORMAL_MASKS, default="all_zero",
                        help="missing gt normals in the evaluation: all_zero (the losses' rule) or mtan (MTAN's "
                             "channel sum == 0, which also drops valid normals whose components sum to 0; only to "
                             "compare with MTAN-family code)")
    add_segnet_flags(parser)
    args = parser.parse_args(argv)
    setup_runtime(args.distributed, args.compilation_cache)
    preset = PRESETS[args.preset]
    settings = dataclasses.replace(preset["settings"], **settings_overrides(args))
    image_size = preset["image_size"] if args.protocol == "paper" or args.data_dir is None else None
    target_size = preset["target_size"] if args.protocol == "paper" or args.data_dir is None else None
    splits, info = load_nyuv2(args.data_dir, args.protocol, image_size=image_size, target_size=target_size,
                              synthetic_sizes=preset["sizes"], seed=0)
    width = args.width if args.width is not None else preset["width"]
    bench = dense_benchmark(
        "nyuv2", splits, info, width=width, model_options={"use_batchnorm": not args.no_batchnorm},
        table_metrics=table_metrics, task_columns={"seg": "seg_err", "depth": "depth_rmse", "normal": "normal_err"},
        augment=dense_augment() if args.augment else None, vgg16_weights=args.vgg16_weights,
        normal_mask=args.normal_mask)
    cli_kwargs = method_kwargs_from_args(args, default_alpha=10.0, scale_alpha_default=True)
    rows = [row_for(key, ROWS, cli_kwargs, settings.recon_base) for key in args.methods]
    workdir = args.workdir or default_workdir("nyuv2", args.preset)
    protocol = {"preset": args.preset, "protocol": args.protocol, "epochs": settings.epochs,
                "batch size": settings.batch_size, "optimiser": f"Adam lr {settings.learning_rate:g} (constant)",
                "SegNet width": width, "VGG16 weights": args.vgg16_weights or "none (random init)",
                "CosReg": f"alpha {cli_kwargs['cosreg']['alpha']:g}, x mean task loss: "
                          f"{cli_kwargs['cosreg']['scale_alpha_by_loss']}",
                "augmentation": "scale-crop + flip" if args.augment else "none",
                **dwa_protocol(rows, settings, len(splits["train"]["image"])),
                "valid pixels": ("depth gt != 0; normals not all-zero" if args.normal_mask == "all_zero" else
                                 "depth gt != 0; normals: loss not all-zero, metrics channel sum != 0 (MTAN)"),
                "seeds": list(settings.seeds), "evaluated on": "test split (MTAN's 'val'), final epoch"}

    def extra(results, summary):
        text, payload = field_section(summary)
        return [("The field's nine metrics and Δm%", text)], {"field_metrics": payload}

    notes = list(info.get("notes", []))
    if info.get("synthetic"):
        notes.append("SYNTHETIC DATA: numbers are not comparable with the paper's; they exercise the full pipeline.")
    run_benchmark(bench, rows, settings, workdir, title="NYUv2 (Table 2)", columns=COLUMNS, paper=PAPER,
                  data_info=info, protocol=protocol, notes=notes, extra=extra)


if __name__ == "__main__":
    run_command(main)
