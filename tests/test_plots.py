"""Tests for orthojax.plots: valid PNG files are written, axes fitted to the data, the rolling-sigma window
rule, and bad input rejected."""

import matplotlib.image
import numpy as np
import pytest

from orthojax import plots as P

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path, min_size=(200, 300)):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] >= min_size[0] and img.shape[1] >= min_size[1]
    assert img.shape[0] < 4000 and img.shape[1] < 4000
    assert img.std() > 0  # something was drawn
    return img


@pytest.fixture
def cosines():
    rng = np.random.default_rng(0)
    return {"no reg": np.tanh(rng.normal(scale=0.4, size=120)),
            "cosreg": np.tanh(rng.normal(scale=0.05, size=120))}


def test_plot_cosine_distributions(tmp_path, cosines):
    out = P.plot_cosine_distributions(cosines, tmp_path / "sub" / "cos.png", title="Phi")
    assert out == tmp_path / "sub" / "cos.png"
    check_png(out)


def test_cosine_panels_per_pair(tmp_path):
    rng = np.random.default_rng(1)
    data = {"a": rng.uniform(-0.1, 0.1, size=(40, 3)), "b": rng.uniform(-0.05, 0.3, size=(25, 3))}
    one = check_png(P.plot_cosine_distributions({"a": data["a"][:, 0]}, tmp_path / "one.png"))
    three = check_png(P.plot_cosine_distributions(data, tmp_path / "three.png",
                                                  pair_names=["seg / depth", "seg / normal", "depth / normal"]))
    assert three.shape[1] > 2 * one.shape[1]  # one panel per pair, side by side


def test_cosine_axis_limits_fit_the_data():
    rng = np.random.default_rng(0)
    narrow = rng.normal(0.02, 0.01, size=5000)
    lo, hi = P.cosine_axis_limits([narrow])
    q_lo, q_hi = np.percentile(narrow, [0.5, 99.5])
    margin = 0.1 * (q_hi - q_lo)
    assert (lo, hi) == pytest.approx((q_lo - margin, q_hi + margin))
    assert hi - lo < 0.1  # not [-1, 1]: the bars fill the axis
    # few values: nothing is cut; pooled over methods
    few = [np.array([-0.3, 0.0, 0.1]), np.array([0.5])]
    lo, hi = P.cosine_axis_limits(few)
    assert (lo, hi) == pytest.approx((-0.3 - 0.08, 0.5 + 0.08))
    # data spanning [-1, 1] get [-1, 1]; constant data at the edge a non-empty axis inside it
    assert P.cosine_axis_limits([np.linspace(-1, 1, 11)]) == (-1.0, 1.0)
    lo, hi = P.cosine_axis_limits([np.ones(10)])
    assert lo < hi == 1.0 and hi - lo == pytest.approx(0.02)
    lo, hi = P.cosine_axis_limits([np.zeros(10)])
    assert lo < 0.0 < hi


def test_histogram_xlim_in_the_image(tmp_path, monkeypatch):
    """The limits drawn are the fitted ones (read back from the axes before saving)."""
    seen = []
    real_save = P._save

    def spy(fig, path):
        seen.extend(ax.get_xlim() for ax in fig.axes)
        return real_save(fig, path)

    monkeypatch.setattr(P, "_save", spy)
    x = np.random.default_rng(2).normal(0.0, 0.02, size=(300, 2))
    P.plot_cosine_distributions({"m": x}, tmp_path / "h.png")
    for k, (lo, hi) in enumerate(seen):
        assert (lo, hi) == pytest.approx(P.cosine_axis_limits([x[:, k]]))
        assert -0.2 < lo < x[:, k].min() + 0.01 and x[:, k].max() - 0.01 < hi < 0.2


def test_histogram_bins():
    assert P.histogram_bins(0) == 10 and P.histogram_bins(30) == 10
    assert P.histogram_bins(10_000) == int(np.ceil(2 * 10_000 ** (1 / 3)))
    assert P.histogram_bins(10 ** 9) == 50
    with pytest.raises(ValueError, match="n >= 0"):
        P.histogram_bins(-1)


def test_rolling_window_rule():
    assert P.rolling_window(1000) == 50 and P.rolling_window(200) == 50
    assert P.rolling_window(199) == 49 and P.rolling_window(30) == 7
    assert P.rolling_window(20) == 5 and P.rolling_window(19) is None and P.rolling_window(0) is None
    assert P.rolling_window(12, preferred=10, minimum=3) == 3
    with pytest.raises(ValueError, match="steps"):
        P.rolling_window(-1)
    with pytest.raises(ValueError, match="minimum"):
        P.rolling_window(100, preferred=4, minimum=5)


def test_plot_rolling_sigma(tmp_path, cosines):
    check_png(P.plot_rolling_sigma(cosines, tmp_path / "sigma.png", window=50))
    short = {k: v[:30] for k, v in cosines.items()}
    check_png(P.plot_rolling_sigma(short, tmp_path / "short.png", window=P.rolling_window(30)))


def test_plot_training_curves(tmp_path):
    hist = {"equal": {"step": [0, 10, 20], "loss": [2.0, 1.0, 0.5], "acc": [0.1, 0.5, 0.8]},
            "cosreg": {"loss": [2.1, 0.9, 0.4, 0.3], "acc": [0.2, 0.6, 0.8, 0.9],
                       "penalty": [0.3, 0.1, 0.05, 0.01]}}
    check_png(P.plot_training_curves(hist, tmp_path / "curves.png", title="NYUv2"))


def test_training_curves_own_steps_gaps_smoothing_and_note(tmp_path):
    steps = np.arange(1, 301)
    loss = np.exp(-steps / 100.0)
    loss[[5, 6]] = np.nan  # skipped steps: gaps
    hist = {"a": {"seg": {"step": steps.tolist(), "value": loss.tolist()}},
            "b": {"seg": {"step": [100, 200], "value": [0.5, 0.2]}, "depth": [3.0, 2.0, 1.0]}}
    check_png(P.plot_training_curves(hist, tmp_path / "c.png", smooth=6, log_y=True, note="c not reported",
                                     colours={"b": "black"}))
    with pytest.raises(ValueError, match="steps for"):
        P.plot_training_curves({"a": {"seg": {"step": [1], "value": [1.0, 2.0]}}}, tmp_path / "d.png")
    with pytest.raises(ValueError, match="exactly the keys"):
        P.plot_training_curves({"a": {"seg": {"x": [1], "value": [1.0]}}}, tmp_path / "d.png")
    with pytest.raises(ValueError, match="smooth"):
        P.plot_training_curves(hist, tmp_path / "d.png", smooth=0)


def test_moving_average_against_numpy():
    v = np.array([1.0, 2.0, np.nan, 4.0, 8.0])
    for width in (1, 2, 3, 10):  # trailing window, NaN left out
        expected = [np.nanmean(v[max(0, k + 1 - width):k + 1]) if np.isfinite(v[max(0, k + 1 - width):k + 1]).any()
                    else np.nan for k in range(v.size)]
        np.testing.assert_allclose(P._moving_average(v, width), expected)
    np.testing.assert_allclose(P._moving_average(v, 3), [1.0, 1.5, 1.5, 3.0, 6.0])
    assert np.isnan(P._moving_average(np.array([np.nan, 1.0]), 1)[0])


def test_method_colours_are_stable():
    given = P.method_colours(["a", "b", "c"])
    again = P.method_colours(["c", "x", "a"], given)
    assert again["c"] == given["c"] and again["a"] == given["a"]
    assert again["x"] not in (given["a"], given["b"], given["c"])


def test_plot_accuracy_vs_sigma(tmp_path):
    pts = [{"sigma": 0.27, "accuracy": 0.907, "label": "no reg"},
           {"sigma": 0.25, "accuracy": 0.90, "label": "no reg"},
           {"sigma": 0.03, "accuracy": 0.907, "label": "cosreg"}]
    check_png(P.plot_accuracy_vs_sigma(pts, tmp_path / "acc_sigma.png"))


def test_bad_input(tmp_path, cosines):
    with pytest.raises(ValueError, match="non-empty dict"):
        P.plot_cosine_distributions({}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="1-D"):
        P.plot_cosine_distributions({"m": np.zeros((3, 2, 2))}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="same number of task pairs"):
        P.plot_cosine_distributions({"m": np.zeros((3, 2)), "n": np.zeros((3, 3))}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="pair_names"):
        P.plot_cosine_distributions({"m": np.zeros((3, 2))}, tmp_path / "a.png", pair_names=["x"])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        P.plot_cosine_distributions({"m": np.array([0.5, 1.5])}, tmp_path / "a.png")
    with pytest.raises(ValueError, match=".png"):
        P.plot_cosine_distributions(cosines, tmp_path / "a.pdf")
    with pytest.raises(ValueError, match="bins"):
        P.plot_cosine_distributions(cosines, tmp_path / "a.png", bins=0)
    with pytest.raises(ValueError, match="at least 500 steps"):
        P.plot_rolling_sigma(cosines, tmp_path / "b.png", window=500)
    with pytest.raises(ValueError, match="window"):
        P.plot_rolling_sigma(cosines, tmp_path / "b.png", window=0)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        P.plot_training_curves({"m": {"loss": []}}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="dict of name"):
        P.plot_training_curves({"m": [1.0, 2.0]}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="no quantity"):
        P.plot_training_curves({"m": {"step": [1, 2]}}, tmp_path / "c.png")
    with pytest.raises(ValueError, match=".png"):
        P.plot_training_curves({"m": {"loss": [1.0]}}, tmp_path / "c.svg")
    with pytest.raises(ValueError, match="non-empty list"):
        P.plot_accuracy_vs_sigma([], tmp_path / "d.png")
    with pytest.raises(ValueError, match=r"points\[1\]"):
        P.plot_accuracy_vs_sigma([{"sigma": 0.1, "accuracy": 0.9, "label": "a"},
                                  {"sigma": 0.1, "label": "b"}], tmp_path / "d.png")
    with pytest.raises(ValueError, match="finite"):
        P.plot_accuracy_vs_sigma([{"sigma": float("inf"), "accuracy": 0.9, "label": "a"}],
                                 tmp_path / "d.png")
    with pytest.raises(ValueError, match="lower < upper"):
        P.cosine_axis_limits([np.zeros(3)], lower=50, upper=10)
    with pytest.raises(ValueError, match="no finite"):
        P.cosine_axis_limits([np.array([np.nan])])
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("*.svg"))  # nothing written
