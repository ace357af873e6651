"""NYUv2 (CosReg paper, section 5.1, Table 2): segmentation, depth and surface normals with SegNet.

Without ``--data-dir`` the data are procedural indoor scenes (geometrically consistent RGB, depth, normals
and labels; every output says so). With it: the MTAN preprocessed layout (<root>/{train,val}/...) or the
official labelled .mat (see ``orthojax.data.load_nyuv2``).

    python -m experiments.nyuv2                                   # quick preset on synthetic scenes
    python -m experiments.nyuv2 --preset paper --data-dir DIR --vgg16-weights vgg16_bn.npz
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from experiments.cli import SEGNET_SHORTHANDS, Experiment, Shorthand, existing_path
from experiments.configs import ExperimentConfig
from experiments.configs.nyuv2 import PRESETS, TABLE_ROWS, get_config
from experiments.dense import DENSE_ROWS, dense_benchmark, trivial_metrics
from experiments.paper_numbers import TABLE2_NYUV2
from experiments.pipeline import Table, protocol_lines, run_command, run_experiment
from experiments.report import reference_check
from orthojax.data import dense_augment, load_nyuv2, steps_per_epoch
from orthojax.metrics import NYUV2_HIGHER_IS_BETTER, delta_m
from orthojax.metrics.trivial import mean_depth

ROWS = DENSE_ROWS
TABLE2_ROWS = TABLE_ROWS

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


DEFINITIONS = {
    "seg 1-mIoU": "1 - mean over the classes of the intersection over union (one confusion matrix over the test split)",
    "depth RMSE": "root mean squared depth error (metres) over the valid test pixels (gt != 0), pooled",
    "normal 1-|cos|": "mean over the valid test pixels of 1 - |cos| between predicted and true normals",
}


def field_section(summary: Sequence[Mapping], trivial: Optional[Mapping[str, float]] = None) -> tuple[str, dict]:
    """The nine field metrics per row and Delta_m% against our single-task row, both aggregations.

    Delta_m% is given only when the single-task row beats the trivial predictor (``trivial``: its metrics)
    on every metric of the aggregation (:func:`experiments.report.reference_check`); otherwise the section
    says why not."""
    by = {e["row"]: e for e in summary}
    lines, payload = [], {}
    for aggregation, title in (("pooled", "pooled (LibMTL-style, exact over all test pixels)"),
                               ("batch", "per-batch means (MTAN-style: segmentation from the confusion matrix "
                                         "over the whole test set, depth and normals averaged per test batch)")):
        names = field_metric_keys(aggregation)
        base = by.get("single_task")
        reference = None if base is None else {n: base["columns"].get(n, {}).get("mean") for n in names}
        present = [n for n in names if reference is not None and reference[n] is not None]
        usable, reason = reference_check(reference, trivial, {n: NYUV2_HIGHER_IS_BETTER[n.split("/")[-1]]
                                                              for n in present})
        lines += [f"**{title}**", ""]
        if base is not None and not usable:
            base = None
            lines += [f"Δm% not reported: {reason}.", ""]
        head = ["Method"] + [n.split("/")[0] + " " + n.split("/")[-1] for n in names] + ["Δm% vs our single task"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
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


EXPERIMENT = Experiment(
    name="nyuv2", description=__doc__.split("\n\n")[0], get_config=get_config, presets=PRESETS, rows=ROWS,
    shorthands=(
        Shorthand(("--protocol",), "data.protocol",
                  "paper: 14 classes (void = background), 80x80 targets; mtan: 13 classes, void ignored",
                  metavar="{paper,mtan}"),
        Shorthand(("--augment",), "data.augment",
                  "random scale-crop (1, 1.2, 1.5; depth / s) and horizontal flips (normal x negated)", const="true"),
        Shorthand(("--normal-mask",), "data.normal_mask",
                  "missing gt normals in the evaluation: all_zero (the losses' rule) or mtan (MTAN's channel sum == "
                  "0, which also drops valid normals whose components sum to 0; only to compare with MTAN-family "
                  "code)", metavar="{all_zero,mtan}"),
        *SEGNET_SHORTHANDS),
    parsers={"model.vgg16_weights": existing_path("file")},
)


def build(config: ExperimentConfig) -> Table:
    """The NYUv2 table of ``config``: data (procedural scenes without ``data.data_dir``), SegNet, report."""
    data, model = config.data, config.model
    # MTAN's preprocessed data is used at its own size under its protocol; the paper resizes
    native = data.protocol == "mtan" and data.data_dir is not None
    splits, info = load_nyuv2(data.data_dir, data.protocol, image_size=None if native else data.image_size,
                              target_size=None if native else data.target_size,
                              synthetic_sizes=data.synthetic_sizes, seed=0)
    bench = dense_benchmark(
        "nyuv2", splits, info, width=model.width, model_options={"use_batchnorm": model.batchnorm},
        table_metrics=table_metrics, task_columns={"seg": "seg_err", "depth": "depth_rmse", "normal": "normal_err"},
        augment=dense_augment() if data.augment else None, vgg16_weights=model.vgg16_weights,
        normal_mask=data.normal_mask)
    protocol = {**protocol_lines(config), "protocol": data.protocol, "SegNet width": model.width,
                "VGG16 weights": model.vgg16_weights or "none (random init)",
                "augmentation": "scale-crop + flip" if data.augment else "none",
                "depth head bias at init": f"mean valid training depth, {mean_depth(splits['train']['depth']):.3f} m",
                "valid pixels": ("depth gt != 0; normals not all-zero" if data.normal_mask == "all_zero" else
                                 "depth gt != 0; normals: loss not all-zero, metrics channel sum != 0 (MTAN)"),
                "evaluated on": "test split (MTAN's 'val'), final epoch"}

    trivial = trivial_metrics(splits, info, table_metrics, eval_batch_size=config.train.eval_batch_size,
                              normal_mask=data.normal_mask)

    def extra(results, summary):
        text, payload = field_section(summary, trivial)
        return [("The field's nine metrics and Δm%", text)], {"field_metrics": payload}

    notes = list(info.get("notes", []))
    if info.get("synthetic"):
        notes.append("SYNTHETIC DATA: numbers are not comparable with the paper's; they exercise the full pipeline.")
    paper = get_config("paper")
    pooled = field_metric_keys("pooled")
    return Table(bench, "NYUv2 (Table 2)", COLUMNS, PAPER, info, protocol, notes, extra, trivial=trivial,
                 directions={n: NYUV2_HIGHER_IS_BETTER[n.split("/")[-1]] for n in pooled},
                 metric_labels={n: n.replace("/", " ") for n in pooled}, definitions=DEFINITIONS,
                 protocol_steps=paper.train.epochs * steps_per_epoch(paper.data.synthetic_sizes[0], paper.train.batch_size))


def main(argv: Optional[Sequence[str]] = None) -> list:
    """``python -m experiments.nyuv2 [flags]`` (``--help`` lists them)."""
    return run_experiment(EXPERIMENT, build, argv)


if __name__ == "__main__":
    run_command(main)
