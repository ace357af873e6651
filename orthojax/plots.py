"""The paper's diagnostic figures as PNG files (matplotlib, Agg canvas, no display).

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot, so
they change no global backend or state and work on headless machines and in threads.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from orthojax.diagnostics import rolling_sigma

__all__ = ["plot_accuracy_vs_sigma", "plot_cosine_distributions", "plot_rolling_sigma", "plot_training_curves"]


def _new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (6.0, 4.0)):
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Figure, path: str | Path) -> Path:
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(p, format="png")
    return p


def _check_cosines_by_method(cosines_by_method: Mapping[str, Any], min_steps: int = 1
                             ) -> dict[str, np.ndarray]:
    if not isinstance(cosines_by_method, Mapping) or not cosines_by_method:
        raise ValueError("cosines_by_method must be a non-empty dict of method name -> cosines")
    out = {}
    for name, c in cosines_by_method.items():
        a = np.asarray(c, dtype=np.float64)
        if a.ndim != 1 or a.size < min_steps:
            raise ValueError(
                f"cosines_by_method[{name!r}] must be 1-D with at least {min_steps} steps, "
                f"got shape {a.shape}")
        if not np.all(np.isfinite(a)) or np.any(np.abs(a) > 1.0 + 1e-6):
            raise ValueError(f"cosines_by_method[{name!r}] must hold finite values in [-1, 1]")
        out[str(name)] = a
    return out


def plot_cosine_distributions(cosines_by_method: Mapping[str, Any], path: str | Path,
                              title: str = "Cosine distribution between task gradients",
                              bins: int = 50) -> Path:
    """Density histogram of Phi per method on [-1, 1], legend with mu and sigma (Figures 2, 4).

    Args:
      cosines_by_method: method name -> (steps,) cosines of one task pair.
      path: output .png (parent directories are created).
      title: axes title.
      bins: number of histogram bins on [-1, 1].

    Returns:
      The written path.
    """
    data = _check_cosines_by_method(cosines_by_method)
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    fig, axes = _new_figure()
    ax = axes[0, 0]
    for name, c in data.items():
        ax.hist(c, bins=bins, range=(-1.0, 1.0), density=True, histtype="step", linewidth=1.5,
                label=f"{name} (mu={c.mean():.3f}, sigma={c.std():.3f})")
    ax.axvline(0.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(-1.0, 1.0)
    ax.set_xlabel("cosine between task gradients")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_rolling_sigma(cosines_by_method: Mapping[str, Any], path: str | Path, window: int = 50,
                       title: str = "Rolling standard deviation of task-gradient cosines") -> Path:
    """sigma over sliding windows of ``window`` iterations against the iteration (Figure 5).

    The value at iteration k + window - 1 is the std of iterations k .. k + window - 1.

    Args:
      cosines_by_method: method name -> (steps,) cosines, steps >= window.
      path: output .png.
      window: window length in iterations.
      title: axes title.

    Returns:
      The written path.
    """
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    data = _check_cosines_by_method(cosines_by_method, min_steps=window)
    fig, axes = _new_figure()
    ax = axes[0, 0]
    for name, c in data.items():
        s = rolling_sigma(c, window)
        ax.plot(np.arange(window - 1, c.size), s, label=name, linewidth=1.2)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"sigma (window {window})")
    ax.set_ylim(bottom=0.0)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_training_curves(history_by_method: Mapping[str, Mapping[str, Sequence[float]]],
                         path: str | Path, title: str | None = None) -> Path:
    """One panel per logged quantity, one line per method.

    Args:
      history_by_method: method name -> {quantity name -> list of values}. An optional "step" list
        gives the x values for that method's quantities of the same length (else 0, 1, ...).
      path: output .png.
      title: optional figure title.

    Returns:
      The written path.
    """
    if not isinstance(history_by_method, Mapping) or not history_by_method:
        raise ValueError("history_by_method must be a non-empty dict of method -> {name: values}")
    series: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for method, hist in history_by_method.items():
        if not isinstance(hist, Mapping):
            raise ValueError(f"history_by_method[{method!r}] must be a dict of name -> values")
        steps = np.asarray(hist["step"], np.float64) if "step" in hist else None
        for key, values in hist.items():
            if key == "step":
                continue
            v = np.asarray(values, dtype=np.float64)
            if v.ndim != 1 or v.size == 0:
                raise ValueError(
                    f"history_by_method[{method!r}][{key!r}] must be a non-empty 1-D list, got "
                    f"shape {v.shape}")
            x = steps if steps is not None and steps.shape == v.shape else np.arange(v.size)
            series.setdefault(str(key), {})[str(method)] = (x, v)
    if not series:
        raise ValueError("history_by_method holds no quantity to plot")
    n = len(series)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = _new_figure(ncols, nrows, size=(4.5, 3.2))
    flat = axes.reshape(-1)
    for ax, (key, by_method) in zip(flat, sorted(series.items())):
        for method, (x, v) in by_method.items():
            ax.plot(x, v, label=method, linewidth=1.2)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.legend(fontsize="x-small")
    for ax in flat[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_accuracy_vs_sigma(points: Sequence[Mapping[str, Any]], path: str | Path,
                           title: str = "Final accuracy vs first-epoch sigma") -> Path:
    """Scatter of final accuracy against first-epoch sigma, one colour per label (Figure 3).

    Args:
      points: dicts with "sigma" (float), "accuracy" (float) and "label" (str, e.g. the method).
      path: output .png.
      title: axes title.

    Returns:
      The written path.
    """
    if isinstance(points, Mapping) or not isinstance(points, Sequence) or len(points) == 0:
        raise ValueError("points must be a non-empty list of dicts with sigma, accuracy, label")
    groups: dict[str, list[tuple[float, float]]] = {}
    for k, pt in enumerate(points):
        if not isinstance(pt, Mapping) or not {"sigma", "accuracy", "label"} <= set(pt):
            raise ValueError(f"points[{k}] must be a dict with keys sigma, accuracy, label; got {pt!r}")
        s, a = float(pt["sigma"]), float(pt["accuracy"])
        if not (math.isfinite(s) and math.isfinite(a)):
            raise ValueError(f"points[{k}] must have finite sigma and accuracy, got {pt!r}")
        groups.setdefault(str(pt["label"]), []).append((s, a))
    fig, axes = _new_figure()
    ax = axes[0, 0]
    for label, xy in groups.items():
        arr = np.asarray(xy)
        ax.scatter(arr[:, 0], arr[:, 1], label=label, s=25)
    ax.set_xlabel("sigma of cosines, first epoch")
    ax.set_ylabel("final validation accuracy")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _save(fig, path)
