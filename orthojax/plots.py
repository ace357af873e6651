"""The paper's diagnostic figures and training curves as PNG files (matplotlib, Agg canvas, no display).

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot, so they change
no global backend or state and work on headless machines and in threads. Legends sit outside the axes
(below them), so they never cover data; every method keeps one colour across the panels of a figure.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from orthojax.diagnostics import rolling_sigma

__all__ = ["cosine_axis_limits", "histogram_bins", "method_colours", "plot_accuracy_vs_sigma",
           "plot_cosine_distributions", "plot_rolling_sigma", "plot_training_curves", "rolling_window"]


def _new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (6.0, 4.0)):
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _check_path(path: str | Path) -> Path:
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    return p


def _save(fig: Figure, path: str | Path) -> Path:
    p = _check_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    # "tight" keeps the legends placed outside the axes inside the image
    fig.savefig(p, format="png", bbox_inches="tight", pad_inches=0.15)
    return p


def method_colours(names: Sequence[str], given: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """One colour per name: ``given``'s where it has one, the others in order from the tab10 cycle
    (skipping the colours ``given`` uses while any is left). Pass one mapping to every figure of a run so a
    method keeps its colour across figures."""
    from matplotlib import colormaps

    given = dict(given or {})
    cycle = list(colormaps["tab10"].colors)
    free = [c for c in cycle if c not in given.values()] or cycle
    out, k = {}, 0
    for name in names:
        if name in given:
            out[name] = given[name]
        else:
            out[name] = free[k % len(free)]
            k += 1
    return out


def _legend_below(ax, ncol: int = 1) -> None:
    """The axes' legend under the axes (clear of every bar and line)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, fontsize="small", frameon=False)


def _figure_legend(fig: Figure, axes: Sequence[Any], title: Optional[str] = None) -> None:
    """One legend for the figure under all its panels (each label once, in first-seen order)."""
    handles: dict = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=max(1, min(6, len(handles))), fontsize="small", frameon=False, title=title or None,
               title_fontsize="small")


def _integer_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _check_pair_names(pair_names: Optional[Sequence[str]], n_pairs: int) -> list[str]:
    if pair_names is None:
        return [f"pair {k}" for k in range(n_pairs)] if n_pairs > 1 else [""]
    names = [str(n) for n in pair_names]
    if len(names) != n_pairs:
        raise ValueError(f"pair_names must have one name per task pair ({n_pairs}), got {len(names)}: {names}")
    return names


def _check_cosines_by_method(cosines_by_method: Mapping[str, Any], min_steps: int = 1
                             ) -> dict[str, np.ndarray]:
    """name -> (steps, P) float64; 1-D input is one pair. Every method must have the same P."""
    if not isinstance(cosines_by_method, Mapping) or not cosines_by_method:
        raise ValueError("cosines_by_method must be a non-empty dict of method name -> cosines")
    out = {}
    for name, c in cosines_by_method.items():
        a = np.asarray(c, dtype=np.float64)
        if a.ndim not in (1, 2) or a.shape[0] < min_steps or a.size == 0:
            raise ValueError(
                f"cosines_by_method[{name!r}] must be 1-D (steps,) or 2-D (steps, pairs) with at least "
                f"{min_steps} steps, got shape {a.shape}")
        if not np.all(np.isfinite(a)) or np.any(np.abs(a) > 1.0 + 1e-6):
            raise ValueError(f"cosines_by_method[{name!r}] must hold finite values in [-1, 1]")
        out[str(name)] = a.reshape(a.shape[0], -1)
    pairs = {a.shape[1] for a in out.values()}
    if len(pairs) != 1:
        raise ValueError(f"cosines_by_method: every method needs the same number of task pairs, got "
                         f"{ {k: v.shape[1] for k, v in out.items()} }")
    return out


def _pair_figure(data: Mapping[str, np.ndarray], pair_names: Optional[Sequence[str]], path: str | Path,
                 colours: Optional[Mapping[str, Any]], panel_size: tuple[float, float]):
    """One panel per task pair, side by side: ``(names, colours, fig, axes)`` after checking ``pair_names``
    against the pairs of ``data`` (step, pair) arrays and ``path`` (ValueError, before anything is drawn)."""
    n_pairs = next(iter(data.values())).shape[1]
    names = _check_pair_names(pair_names, n_pairs)
    _check_path(path)
    fig, axes = _new_figure(n_pairs, 1, size=panel_size)
    return names, method_colours(list(data), colours), fig, axes


def cosine_axis_limits(cosines: Sequence[Any], lower: float = 0.5, upper: float = 99.5, pad: float = 0.1,
                       min_width: float = 0.02) -> tuple[float, float]:
    """The x range of a cosine histogram, fitted to the data.

    ``[q_lower - m, q_upper + m]`` clipped to [-1, 1], where q are the ``lower`` / ``upper`` percentiles of
    all values pooled (the minimum / maximum when a percentile would leave out less than one value, e.g.
    under 200 values for 0.5) and ``m = pad * max(q_upper - q_lower, min_width)``: [-1, 1] only when the data span
    it; a distribution concentrated near 0 (CosReg's) fills the axis instead of one bar in the middle.

    Args:
      cosines: 1-D arrays of cosines (one per method), pooled.
      lower, upper: percentiles (0 <= lower < upper <= 100) that set the range; values outside it are
        counted, not drawn.
      pad: margin on each side, as a fraction of the percentile range.
      min_width: the smallest percentile range used for the margin (constant data still get an axis).

    Returns:
      (lo, hi), -1 <= lo < hi <= 1.

    Raises:
      ValueError: bad percentiles, negative pad or min_width, or no finite value.
    """
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower!r}, upper={upper!r}")
    if pad < 0 or min_width <= 0:
        raise ValueError(f"pad must be >= 0 and min_width > 0, got pad={pad!r}, min_width={min_width!r}")
    values = np.concatenate([np.asarray(c, np.float64).reshape(-1) for c in cosines]) if len(cosines) else np.zeros(0)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("cosines hold no finite value")
    q_lo, q_hi = np.percentile(values, [lower, upper])
    if values.size * lower / 100.0 < 1.0:  # the percentile would cut less than one value: keep them all
        q_lo = values.min()
    if values.size * (100.0 - upper) / 100.0 < 1.0:
        q_hi = values.max()
    margin = pad * max(q_hi - q_lo, min_width)
    lo, hi = max(-1.0, q_lo - margin), min(1.0, q_hi + margin)
    if hi - lo < min_width:  # at the edge of [-1, 1]
        lo, hi = (max(-1.0, hi - min_width), hi) if hi >= 1.0 else (lo, min(1.0, lo + min_width))
    return float(lo), float(hi)


def histogram_bins(n: int, low: int = 10, high: int = 50) -> int:
    """Bins for a histogram of ``n`` values: Rice's rule ``ceil(2 n^(1/3))`` clipped to [low, high]
    (30 values: 10 bins; 10,000: 44), so a short run's histogram is not a row of single-count spikes.

    Raises:
      ValueError: n < 0 or not 1 <= low <= high.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0 or not 1 <= low <= high:
        raise ValueError(f"need an int n >= 0 and 1 <= low <= high, got n={n!r}, low={low!r}, high={high!r}")
    return int(min(high, max(low, math.ceil(2.0 * n ** (1.0 / 3.0)))))


def plot_cosine_distributions(cosines_by_method: Mapping[str, Any], path: str | Path,
                              title: str = "Cosine distribution between task gradients",
                              bins: Optional[int] = None, pair_names: Optional[Sequence[str]] = None,
                              colours: Optional[Mapping[str, Any]] = None) -> Path:
    """Density histogram of Phi per method, one panel per task pair (Figures 2, 4).

    Each panel's x range is :func:`cosine_axis_limits` of its data (all methods pooled); the density is
    ``count / (steps * bin width)`` over all of a method's steps, so a method with values outside the
    axis keeps its scale (the legend says how many are outside). The legend, under the axes, gives mu and
    sigma of every method over all its steps.

    Args:
      cosines_by_method: method name -> (steps,) cosines of one task pair, or (steps, P) of P pairs
        (every method with the same P; steps may differ).
      path: output .png (parent directories are created).
      title: figure title.
      bins: number of histogram bins over the fitted range (default :func:`histogram_bins` of the
        fewest steps).
      pair_names: P panel titles (e.g. "seg / depth"); default "pair k" (none for one pair).
      colours: method name -> colour (see :func:`method_colours`).

    Returns:
      The written path.

    Raises:
      ValueError: bad cosines (not 1-D / 2-D, not finite, outside [-1, 1]), bins or pair_names, or a path
        that is not a .png (nothing is written).
    """
    data = _check_cosines_by_method(cosines_by_method)
    if bins is None:
        bins = histogram_bins(min(c.shape[0] for c in data.values()))
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    names, colours, fig, axes = _pair_figure(data, pair_names, path, colours, (5.2, 3.8))
    for k, ax in enumerate(axes[0]):
        lo, hi = cosine_axis_limits([c[:, k] for c in data.values()])
        edges = np.linspace(lo, hi, bins + 1)
        for name, c in data.items():
            x = c[:, k]
            counts, _ = np.histogram(x, bins=edges)
            outside = int(x.size - counts.sum())
            label = f"{name}: μ={x.mean():.3f}, σ={x.std():.3f}"
            if outside:
                label += f" ({outside} of {x.size} outside the axis)"
            ax.stairs(counts / (x.size * np.diff(edges)), edges, color=colours[name], linewidth=1.5, label=label)
        if lo < 0.0 < hi:
            ax.axvline(0.0, color="grey", linestyle=":", linewidth=1)
        ax.set_xlim(lo, hi)
        ax.set_ylim(bottom=0.0)
        ax.set_xlabel("cosine between task gradients")
        ax.set_ylabel("density")
        if names[k]:
            ax.set_title(names[k])
        _legend_below(ax)
    fig.suptitle(title)
    return _save(fig, path)


def rolling_window(steps: int, preferred: int = 50, minimum: int = 5, fraction: int = 4) -> Optional[int]:
    """The rolling-sigma window that fits a run of ``steps`` iterations.

    ``min(preferred, steps // fraction)``: the paper's 50 iterations when the run has at least
    ``fraction * preferred`` steps, else a quarter of the run (so the curve has at least ``fraction``
    windows' worth of points); None when that is below ``minimum`` (a sigma over fewer iterations says
    nothing).

    Raises:
      ValueError: ``steps`` < 0, or ``preferred`` / ``minimum`` / ``fraction`` not positive ints with
        minimum <= preferred.
    """
    for name, v in (("preferred", preferred), ("minimum", minimum), ("fraction", fraction)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if minimum > preferred:
        raise ValueError(f"minimum ({minimum}) must not exceed preferred ({preferred})")
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    window = min(int(preferred), int(steps) // int(fraction))
    return window if window >= minimum else None


def plot_rolling_sigma(cosines_by_method: Mapping[str, Any], path: str | Path, window: int = 50,
                       title: str = "Rolling standard deviation of task-gradient cosines",
                       pair_names: Optional[Sequence[str]] = None,
                       colours: Optional[Mapping[str, Any]] = None) -> Path:
    """sigma over sliding windows of ``window`` iterations against the iteration, one panel per task
    pair (Figure 5).

    The value at iteration k + window - 1 is the std of iterations k .. k + window - 1
    (:func:`orthojax.diagnostics.rolling_sigma`); :func:`rolling_window` picks a window for a short run.

    Args:
      cosines_by_method: method name -> (steps,) or (steps, P) cosines, steps >= window.
      path: output .png.
      window: window length in iterations.
      title: figure title.
      pair_names: P panel titles; default "pair k" (none for one pair).
      colours: method name -> colour (see :func:`method_colours`).

    Returns:
      The written path.

    Raises:
      ValueError: bad window, cosines (fewer than ``window`` steps among them), pair_names or path.
    """
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    data = _check_cosines_by_method(cosines_by_method, min_steps=window)
    names, colours, fig, axes = _pair_figure(data, pair_names, path, colours, (5.2, 3.6))
    for k, ax in enumerate(axes[0]):
        for name, c in data.items():
            ax.plot(np.arange(window, c.shape[0] + 1), rolling_sigma(c[:, k], window), label=name,
                    color=colours[name], linewidth=1.2)
        ax.set_xlabel("iteration (end of window)")
        ax.set_ylabel(f"σ of cosines (window {window})")
        ax.set_ylim(bottom=0.0)
        _integer_steps(ax)
        if names[k]:
            ax.set_title(names[k])
    fig.suptitle(title)
    _figure_legend(fig, axes[0])
    return _save(fig, path)


def _minor_log_label(y: float, _pos: Any = None) -> str:
    """Minor ticks of a log axis labelled at 2 and 5 times a power of ten only (the others crowd)."""
    if y <= 0:
        return ""
    mantissa = y / 10.0 ** math.floor(math.log10(y))
    return f"{y:.3g}" if round(mantissa, 6) in (2.0, 5.0) else ""


def _moving_average(v: np.ndarray, width: int) -> np.ndarray:
    """Trailing mean over ``width`` points, NaN (skipped) points left out; NaN where a window has none."""
    ok = np.isfinite(v)
    s = np.concatenate([[0.0], np.cumsum(np.where(ok, v, 0.0))])
    n = np.concatenate([[0], np.cumsum(ok)])
    idx = np.arange(1, v.size + 1)
    start = np.maximum(idx - width, 0)
    count = n[idx] - n[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (s[idx] - s[start]) / np.maximum(count, 1), np.nan)


def plot_training_curves(history_by_method: Mapping[str, Mapping[str, Sequence[float]]],
                         path: str | Path, title: str | None = None, *, xlabel: str = "step",
                         ylabel: str | None = None, log_y: bool = False, smooth: int = 1,
                         note: str | None = None, colours: Optional[Mapping[str, Any]] = None) -> Path:
    """One panel per quantity (in first-seen order), one line per method, one legend for the figure.

    Non-finite values (skipped steps) are gaps. With ``smooth`` > 1 each method's raw values are drawn
    faint and their trailing mean over ``smooth`` points on top.

    Args:
      history_by_method: method name -> {quantity name -> list of values, or {"step": x values, "value":
        values}}. An optional "step" list gives the x values for that method's lists of the same length
        (else 0, 1, ...).
      path: output .png.
      title: optional figure title.
      xlabel, ylabel: axis labels (ylabel default: none).
      log_y: logarithmic y axes (panels with a non-positive value stay linear).
      smooth: points in the trailing mean (1: raw values only).
      note: a line printed under the panels (e.g. which methods do not report the quantity).
      colours: method name -> colour (see :func:`method_colours`).

    Returns:
      The written path.

    Raises:
      ValueError: an empty or malformed history, a quantity that is not a non-empty 1-D list, smooth < 1,
        or a path that is not a .png.
    """
    if not isinstance(history_by_method, Mapping) or not history_by_method:
        raise ValueError("history_by_method must be a non-empty dict of method -> {name: values}")
    if not isinstance(smooth, int) or isinstance(smooth, bool) or smooth < 1:
        raise ValueError(f"smooth must be a positive int, got {smooth!r}")
    series: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for method, hist in history_by_method.items():
        if not isinstance(hist, Mapping):
            raise ValueError(f"history_by_method[{method!r}] must be a dict of name -> values")
        steps = np.asarray(hist["step"], np.float64) if "step" in hist else None
        for key, values in hist.items():
            if key == "step":
                continue
            own = None
            if isinstance(values, Mapping):
                if set(values) != {"step", "value"}:
                    raise ValueError(f"history_by_method[{method!r}][{key!r}] as a dict must have exactly the keys "
                                     f"'step' and 'value', got {sorted(values)}")
                own, values = np.asarray(values["step"], np.float64), values["value"]
            v = np.asarray(values, dtype=np.float64)
            if v.ndim != 1 or v.size == 0:
                raise ValueError(
                    f"history_by_method[{method!r}][{key!r}] must be a non-empty 1-D list, got "
                    f"shape {v.shape}")
            if own is not None and own.shape != v.shape:
                raise ValueError(f"history_by_method[{method!r}][{key!r}]: {own.size} steps for {v.size} values")
            x = own if own is not None else (
                steps if steps is not None and steps.shape == v.shape else np.arange(v.size, dtype=np.float64))
            series.setdefault(str(key), {})[str(method)] = (x, v)
    if not series:
        raise ValueError("history_by_method holds no quantity to plot")
    _check_path(path)
    colours = method_colours([str(m) for m in history_by_method], colours)
    n = len(series)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = _new_figure(ncols, nrows, size=(4.6, 3.3))
    flat = axes.reshape(-1)
    for ax, (key, by_method) in zip(flat, series.items()):
        for method, (x, v) in by_method.items():
            if smooth > 1:
                ax.plot(x, v, color=colours[method], linewidth=0.6, alpha=0.3)
                v = _moving_average(v, smooth)
            ax.plot(x, v, label=method, color=colours[method], linewidth=1.4, marker="o" if v.size <= 12 else None,
                    markersize=3)
        values = np.concatenate([v for _, v in by_method.values()])
        values = values[np.isfinite(values)]
        if log_y and values.size and np.all(values > 0):
            from matplotlib.ticker import FuncFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:.3g}"))  # 0.2, not 2 x 10^-1
            ax.yaxis.set_minor_formatter(FuncFormatter(_minor_log_label))
        xs = np.concatenate([x for x, _ in by_method.values()])
        if np.ptp(xs) < 2:  # one or two evaluations: a readable step axis around them
            ax.set_xlim(xs.min() - 1, xs.max() + 1)
        ax.set_title(key)
        ax.set_xlabel(xlabel)
        _integer_steps(ax)
        if ylabel:
            ax.set_ylabel(ylabel)
        ax.grid(True, linewidth=0.4, alpha=0.5)
    for ax in flat[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    caption = [note] if note else []
    if smooth > 1:
        caption.append(f"bold: trailing mean over {smooth} points; faint: every value")
    _figure_legend(fig, flat[:n], "\n".join(caption))
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
    _check_path(path)
    fig, axes = _new_figure()
    ax = axes[0, 0]
    for label, xy in groups.items():
        arr = np.asarray(xy)
        ax.scatter(arr[:, 0], arr[:, 1], label=label, s=25)
    ax.set_xlabel("sigma of cosines, first epoch")
    ax.set_ylabel("final validation accuracy")
    ax.set_title(title)
    _legend_below(ax, ncol=min(3, len(groups)))
    return _save(fig, path)
