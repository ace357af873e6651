"""Tests for orthojax.plots: valid PNG files are written and bad input is rejected."""

import matplotlib.image
import numpy as np
import pytest

from orthojax import plots as P

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 0  # something was drawn


@pytest.fixture
def cosines():
    rng = np.random.default_rng(0)
    return {"no reg": np.tanh(rng.normal(scale=0.4, size=120)),
            "cosreg": np.tanh(rng.normal(scale=0.05, size=120))}


def test_plot_cosine_distributions(tmp_path, cosines):
    out = P.plot_cosine_distributions(cosines, tmp_path / "sub" / "cos.png", title="Phi")
    assert out == tmp_path / "sub" / "cos.png"
    check_png(out)


def test_plot_rolling_sigma(tmp_path, cosines):
    check_png(P.plot_rolling_sigma(cosines, tmp_path / "sigma.png", window=50))


def test_plot_training_curves(tmp_path):
    hist = {"equal": {"step": [0, 10, 20], "loss": [2.0, 1.0, 0.5], "acc": [0.1, 0.5, 0.8]},
            "cosreg": {"loss": [2.1, 0.9, 0.4, 0.3], "acc": [0.2, 0.6, 0.8, 0.9],
                       "penalty": [0.3, 0.1, 0.05, 0.01]}}
    check_png(P.plot_training_curves(hist, tmp_path / "curves.png", title="NYUv2"))


def test_plot_accuracy_vs_sigma(tmp_path):
    pts = [{"sigma": 0.27, "accuracy": 0.907, "label": "no reg"},
           {"sigma": 0.25, "accuracy": 0.90, "label": "no reg"},
           {"sigma": 0.03, "accuracy": 0.907, "label": "cosreg"}]
    check_png(P.plot_accuracy_vs_sigma(pts, tmp_path / "acc_sigma.png"))


def test_bad_input(tmp_path, cosines):
    with pytest.raises(ValueError, match="non-empty dict"):
        P.plot_cosine_distributions({}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="1-D"):
        P.plot_cosine_distributions({"m": np.zeros((3, 2))}, tmp_path / "a.png")
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
    with pytest.raises(ValueError, match="non-empty list"):
        P.plot_accuracy_vs_sigma([], tmp_path / "d.png")
    with pytest.raises(ValueError, match=r"points\[1\]"):
        P.plot_accuracy_vs_sigma([{"sigma": 0.1, "accuracy": 0.9, "label": "a"},
                                  {"sigma": 0.1, "label": "b"}], tmp_path / "d.png")
    with pytest.raises(ValueError, match="finite"):
        P.plot_accuracy_vs_sigma([{"sigma": float("inf"), "accuracy": 0.9, "label": "a"}],
                                 tmp_path / "d.png")
    assert not list(tmp_path.glob("*.png"))  # nothing written on bad input
