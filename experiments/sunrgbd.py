"""SUN RGB-D (CosReg paper, section 5.2, Table 3): correlated coarse / fine segmentation and depth.

Tasks: 13-class and 37-class segmentation (label 0 = ignore in both) and depth, with SegNet. Without
``--data-dir`` the data are procedural indoor scenes with fine labels and their coarse grouping (every
output says so). With it: the reorganised layout (image / depth / label13 / label37 + list files).

    python -m experiments.sunrgbd                                  # quick preset on synthetic scenes
    python -m experiments.sunrgbd --preset paper --data-dir DIR --vgg16-weights vgg16_bn.npz
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from experiments.cli import SEGNET_SHORTHANDS, Experiment, Shorthand, existing_path
from experiments.configs import ExperimentConfig
from experiments.configs.sunrgbd import PRESETS, TABLE_ROWS, get_config
from experiments.dense import DENSE_ROWS, dense_benchmark, trivial_metrics
from experiments.paper_numbers import TABLE3_SUNRGBD
from experiments.pipeline import Table, protocol_lines, run_command, run_experiment
from orthojax.data import dense_augment, load_sunrgbd, steps_per_epoch
from orthojax.metrics.trivial import mean_depth

ROWS = DENSE_ROWS
TABLE3_ROWS = TABLE_ROWS

COLUMNS = (("seg13_err", "seg13 1-mIoU", 3), ("seg37_err", "seg37 1-mIoU", 3), ("depth_rmse", "depth RMSE", 3))
PAPER = {k: dict(zip(("seg13_err", "seg37_err", "depth_rmse"), v)) for k, v in TABLE3_SUNRGBD.items()}
TASK_COLUMNS = {"seg13": "seg13_err", "seg37": "seg37_err", "depth": "depth_rmse"}
DIRECTIONS = {"seg13/miou": True, "seg13/pixel_acc": True, "seg37/miou": True, "seg37/pixel_acc": True,
              "depth/abs_err": False, "depth/rel_err": False}
"""The compared metrics (key -> higher is better): both segmentations' mIoU and pixel accuracy, depth errors."""
DEFINITIONS = {
    "seg13 1-mIoU": "1 - mean over the 13 classes of the intersection over union (one confusion matrix over the "
                    "test split; label 0 ignored)",
    "seg37 1-mIoU": "the same over the 37 classes",
    "depth RMSE": "root mean squared depth error (metres) over the valid test pixels (gt != 0), pooled",
}


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


EXPERIMENT = Experiment(
    name="sunrgbd", description=__doc__.split("\n\n")[0], get_config=get_config, presets=PRESETS, rows=ROWS,
    shorthands=(
        Shorthand(("--depth-format",), "data.depth_format",
                  "depth PNG convention: metres = png / 10000, or the toolbox's bit shift / 1000",
                  metavar="{png10000,toolbox}"),
        Shorthand(("--no-flip",), "data.flip", "no horizontal-flip augmentation", const="false"),
        *SEGNET_SHORTHANDS),
    parsers={"model.vgg16_weights": existing_path("file")},
)


def build(config: ExperimentConfig) -> Table:
    """The SUN RGB-D table of ``config``: data (procedural scenes without ``data.data_dir``), SegNet, report."""
    data, model = config.data, config.model
    splits, info = load_sunrgbd(data.data_dir, image_size=data.image_size, target_size=data.target_size,
                                depth_format=data.depth_format, synthetic_sizes=data.synthetic_sizes, seed=0)
    bench = dense_benchmark(
        "sunrgbd", splits, info, width=model.width, model_options={"use_batchnorm": model.batchnorm},
        table_metrics=table_metrics, task_columns=TASK_COLUMNS,
        augment=dense_augment(scales=(1.0,), flip=True) if data.flip else None, vgg16_weights=model.vgg16_weights)
    protocol = {**protocol_lines(config), "SegNet width": model.width,
                "VGG16 weights": model.vgg16_weights or "none (random init)",
                "augmentation": "horizontal flips" if data.flip else "none",
                "depth head bias at init": f"mean valid training depth, {mean_depth(splits['train']['depth']):.3f} m",
                "classes": info["num_classes"], "evaluated on": "test split, final epoch"}
    notes = list(info.get("notes", []))
    if info.get("synthetic"):
        notes.append("SYNTHETIC DATA: numbers are not comparable with the paper's; they exercise the full pipeline. "
                     "The 'seg37' task holds the synthetic scenes' fine classes, 'seg13' their NYU-13 grouping.")
    paper = get_config("paper")
    return Table(bench, "SUN RGB-D (Table 3)", COLUMNS, PAPER, info, protocol, notes,
                 trivial=trivial_metrics(splits, info, table_metrics, eval_batch_size=config.train.eval_batch_size),
                 directions=DIRECTIONS, metric_labels={k: k.replace("/", " ") for k in DIRECTIONS},
                 definitions=DEFINITIONS,
                 protocol_steps=paper.train.epochs * steps_per_epoch(paper.data.synthetic_sizes[0], paper.train.batch_size))


def main(argv: Optional[Sequence[str]] = None) -> list:
    """``python -m experiments.sunrgbd [flags]`` (``--help`` lists them)."""
    return run_experiment(EXPERIMENT, build, argv)


if __name__ == "__main__":
    run_command(main)
