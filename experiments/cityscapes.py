"""Cityscapes in MTAN's layout: 7-class segmentation and disparity with SegNet-MTAN (MTAN, Nash-MTL, FAMO).

Without ``--data-dir`` the data are synthetic street scenes ray-cast from a pinhole camera, so labels and
disparity agree (every output says so). With it: MTAN's preprocessed release
(``<root>/{train,val}/{image,label_7,depth}/<i>.npy``, see :func:`orthojax.data.load_cityscapes`); "val" is
the test split of every MTAN-family paper. The paper preset is the field's protocol: batch 8, Adam 1e-4,
200 epochs, the mean of the last 10 epochs' evaluations reported. Columns: mIoU, pixel accuracy, disparity
absolute and relative error, and in the comparison Delta_m% against this table's single-task row.

    python -m experiments.cityscapes                                  # quick preset on synthetic scenes
    python -m experiments.cityscapes --preset paper --data-dir DIR    # the field's protocol
    python -m experiments.cityscapes --methods all                    # every registered method, one table

SegNet-MTAN's shared parameters live under "shared" (the engine takes the model's ``shared_path()``); it has
no ``dropout_rate`` nor ``task_specific_layers``, so rows needing them (Recon's retraining stage) are listed
as not run, with the reason. ``--arch segnet`` runs SegNet (one decoder per task) instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

from experiments.cli import Experiment, Shorthand, existing_path
from experiments.configs import ExperimentConfig
from experiments.configs.cityscapes import PRESETS, TABLE_ROWS, get_config
from experiments.dense import DENSE_ROWS, dense_benchmark, depth_l1_loss, trivial_metrics
from experiments.pipeline import Table, protocol_lines, run_command, run_experiment
from experiments.runner import Row
from orthojax.data import cityscapes_augment, load_cityscapes, steps_per_epoch
from orthojax.data.cityscapes import CITYSCAPES_HIGHER_IS_BETTER, CITYSCAPES_STL
from orthojax.methods.registry import method_spec
from orthojax.models import SegNet, SegNetMTAN

__all__ = ["COLUMNS", "DIRECTIONS", "EXPERIMENT", "PAPER", "ROWS", "build", "main", "table_metrics", "unsupported_row"]

ROWS = DENSE_ROWS

COLUMNS = (("seg/miou", "mIoU", 4), ("seg/pixel_acc", "Pix. acc.", 4), ("depth/abs_err", "Abs. err.", 4),
           ("depth/rel_err", "Rel. err.", 4))
DIRECTIONS = {f"{'seg' if name in ('miou', 'pixel_acc') else 'depth'}/{name}": higher
              for name, higher in CITYSCAPES_HIGHER_IS_BETTER.items()}
"""The compared metrics (column key -> higher is better)."""

PAPER = {"single_task": {f"{'seg' if k in ('miou', 'pixel_acc') else 'depth'}/{k}": v for k, v in CITYSCAPES_STL.items()}}
"""The single-task SegNet numbers the MTAN-family papers compare with (FAMO's table; disparity errors averaged
per test batch)."""

DEFINITIONS = {
    "mIoU": "mean over the 7 classes of the intersection over union, from one confusion matrix over the test "
            "split (void pixels, -1, ignored)",
    "Pix. acc.": "correctly labelled / labelled test pixels",
    "Abs. err.": "mean |predicted - true| disparity over the valid test pixels (true disparity != 0), pooled over "
                 "all of them (the published numbers average it per test batch: results.json has both)",
    "Rel. err.": "mean |predicted - true| / true disparity over the valid test pixels, pooled (a ratio, not %)",
}

_MODELS = {"mtan": SegNetMTAN, "segnet": SegNet}
_LATENT = {"mtan": 64, "segnet": 512}  # channels of the representation at width 1


def table_metrics(evaluation: Mapping[str, Any]) -> dict:
    """Every "<task>/<metric>" entry of an evaluation (pooled and "<task>/batch/<metric>")."""
    return {k: v for k, v in evaluation.items() if "/" in k}


def unsupported_row(arch: str, row: Row) -> Optional[str]:
    """Why ``row`` cannot run on the ``arch`` model, or None.

    SegNet-MTAN has neither ``dropout_rate`` nor ``task_specific_layers``: a row setting a model option it
    lacks, or a method that needs one (its registry entry's ``model_options``: Recon retrains with
    task-specific layers), cannot run on it.
    """
    fields = {f.name for f in dataclasses.fields(_MODELS[arch])}
    missing = sorted(set(row.model_kwargs) - fields)
    if missing:
        return f"{_MODELS[arch].__name__} has no {', '.join(missing)}"
    spec = method_spec(row.method)
    needed = sorted(set(spec.model_options) - fields)
    if needed:
        return (f"{spec.label} needs the model option(s) {', '.join(needed)}, which "
                f"{_MODELS[arch].__name__} does not have; run it with --arch segnet")
    return None


EXPERIMENT = Experiment(
    name="cityscapes", description=__doc__.split("\n\n")[0], get_config=get_config, presets=PRESETS, rows=ROWS,
    shorthands=(
        Shorthand(("--arch",), "model.arch", "mtan (SegNet-MTAN, the field's model) or segnet (a decoder per task)",
                  metavar="{mtan,segnet}"),
        Shorthand(("--width",), "model.width", "channel multiplier (1 = VGG16's channels)", metavar="W"),
        Shorthand(("--no-batchnorm",), "model.batchnorm", "no BatchNorm after the convolutions", const="false"),
        Shorthand(("--augment",), "data.augment",
                  "random scale-crop (1, 1.2, 1.5; disparity x s) and horizontal flips", const="true"),
        Shorthand(("--last-epochs",), "data.last_epochs",
                  "report the mean of the last N epochs' evaluations (10: MTAN's protocol)", metavar="N"),
        Shorthand(("--max-items",), "data.max_items", "at most N items per split of the real data", metavar="N"),
    ),
    parsers={"data.data_dir": existing_path("dir")},
)


def build(config: ExperimentConfig) -> Table:
    """The Cityscapes table of ``config``: data (synthetic streets without ``data.data_dir``), the model, report."""
    data, model, train = config.data, config.model, config.train
    splits, info = load_cityscapes(data.data_dir, max_items=data.max_items, synthetic_sizes=data.synthetic_sizes,
                                   image_size=data.image_size, seed=0)
    hw = tuple(info["image_size"])
    if any(v % 32 for v in hw):
        raise ValueError(f"{data.data_dir}: images are {hw}; the models need multiples of 32")
    options = {"use_batchnorm": model.batchnorm}
    if model.arch == "segnet":
        options["input_normalization"] = None  # MTAN's images in [0, 1], as SegNet-MTAN takes them
    bench = dense_benchmark(
        "cityscapes", splits, info, width=model.width, model_options=options, table_metrics=table_metrics,
        task_columns={}, augment=cityscapes_augment() if data.augment else None,
        model=lambda heads, width, output_size, **kw: _MODELS[model.arch](heads=heads, width=width, **kw),
        losses={"depth": depth_l1_loss}, latent_channels=_LATENT[model.arch])
    paper = get_config("paper")
    protocol = {**protocol_lines(config), "model": f"{_MODELS[model.arch].__name__} (width {model.width:g})",
                "losses": "cross-entropy (void ignored); disparity L1 over valid pixels (MTAN)",
                "augmentation": "scale-crop + flip (disparity x s)" if data.augment else "none",
                "image size": list(hw),
                "evaluated on": f"test split (the release's val/), "
                                f"{'final epoch' if data.last_epochs == 1 else f'mean of the last {data.last_epochs} epochs'}"}
    notes = list(info.get("notes", []))
    if info.get("synthetic"):
        notes.append("SYNTHETIC DATA: numbers are not comparable with the published ones; they exercise the full "
                     "pipeline.")
    return Table(bench, "Cityscapes (MTAN layout: 7-class segmentation, disparity)", COLUMNS, PAPER, info, protocol,
                 notes, trivial=trivial_metrics(splits, info, table_metrics, eval_batch_size=train.eval_batch_size),
                 directions=DIRECTIONS, metric_labels={k: label for k, label, _ in COLUMNS}, definitions=DEFINITIONS,
                 protocol_steps=paper.train.epochs * steps_per_epoch(paper.data.synthetic_sizes[0],
                                                                     paper.train.batch_size),
                 unsupported=lambda row: unsupported_row(model.arch, row), last_epochs=data.last_epochs)


def main(argv: Optional[Sequence[str]] = None) -> list:
    """``python -m experiments.cityscapes [flags]`` (``--help`` lists them)."""
    return run_experiment(EXPERIMENT, build, argv)


if __name__ == "__main__":
    run_command(main)
