"""The benchmark suite's grid and report (no timing here: speed is measured by benchmarks/, never asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks import report, suite


def _group(name, model, batch, tasks, medians):
    results = {row: {"median_ms": m, "q1_ms": m * 0.9, "q3_ms": m * 1.1, "compile_s": 1.0, "memory_mb": 2.0}
               for row, m in medians.items()}
    return {"name": name, "model": model, "batch_size": batch, "num_tasks": tasks, "rounds": 3,
            "width": 0.125, "image_size": 64, "output_size": 16, "results": results}


def _document():
    groups = [_group("cnn paper config", "cnn", 64, 2,
                     {"equal": 10.0, "cosreg": 15.0, "torch equal": 8.0, "torch cosreg": 20.0})]
    groups += [_group(f"cnn T={t}", "cnn", 64, t, {"equal": 10.0 + t, "cosreg": 5.0 + 5.0 * t}) for t in (3, 4)]
    groups += [_group("cnn batch=16", "cnn", 16, 2, {"equal": 3.0, "cosreg": 5.0})]
    groups += [_group("segnet quick", "segnet", 4, 3, {"equal": 40.0, "cosreg": 60.0, "torch cosreg": 120.0})]
    groups[-1]["results"]["cosreg[reference]"] = {"error": "ValueError: boom"}
    env = {"threads": "one", "device": "cpu", "cpu_count": 2, "jax": "0", "torch": "0", "xla_flags": ""}
    return {"command": "python -m benchmarks.suite --quick", "date": "2026-01-01 00:00 UTC",
            "runs": [{"environment": env, "groups": groups}]}


def test_report_ratios_slope_and_failed_rows():
    text = report.markdown(_document())
    assert "| CosReg / equal (target: CNN <= 1.8, SegNet 3 heads <= 2.3) | cnn paper config | 1.50 |" in text
    assert "| JAX CosReg / PyTorch CosReg (target <= 1) | cnn paper config | 0.75 |" in text
    assert "| JAX equal / PyTorch equal (target <= 1.1) | cnn paper config | 1.25 |" in text
    assert "| CosReg / equal (target: CNN <= 1.8, SegNet 3 heads <= 2.3) | segnet quick | 1.50 |" in text
    assert "| JAX CosReg / PyTorch CosReg (target <= 1) | segnet quick | 0.50 |" in text
    assert "cnn T=3" not in text.split("**cnn paper config**")[0]  # ratios only for T = 2 (CNN) / 3 (SegNet)
    assert "cosreg: cost per extra task, CNN batch 64 (linear fit over T) | cnn T=2..8 | 5.0 ms/task" in text
    assert "failed: ValueError: boom" in text


def test_update_replaces_only_its_marked_section(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nhand-written text\n")
    path = tmp_path / "suite-quick.json"
    path.write_text(json.dumps(_document()))
    written = report.update(str(path), str(md))
    first = md.read_text()
    assert "hand-written text" in first and first.count("<!-- suite-quick:begin -->") == 1
    report.update(str(path), str(md))
    assert md.read_text() == first  # idempotent
    assert any(p.endswith("suite-quick-step_time_vs_T.png") for p in written)


@pytest.mark.parametrize("quick", [True, False])
def test_grid_covers_the_issue(quick):
    names = ["equal", "cosreg", "mgda", "rotograd"]
    grid = suite.groups(quick, paper_segnet=True, method_names=names)
    rows = {r for g in grid for r in g.rows}
    assert {"equal", "cosreg", "cosreg[fast]", "torch equal", "torch cosreg"} <= rows
    assert any(g.model == "segnet" for g in grid)
    if not quick:
        assert {"mgda", "rotograd"} <= rows
        assert {g.num_tasks for g in grid if g.model == "cnn"} == set(range(2, 9))
        assert {g.batch_size for g in grid if g.model == "cnn"} == {16, 32, 64, 128, 256}
        assert any(g.image_size == 320 and g.width == 1.0 for g in grid)


def test_unknown_groups_and_rows_are_named():
    names = ["equal", "cosreg"]
    with pytest.raises(SystemExit, match="matches no group"):
        suite.selected_groups(True, False, names, "cnn T=5", "")
    with pytest.raises(SystemExit, match="are not rows"):
        suite.selected_groups(True, False, names, "cnn T=4", "cosreg_fast")
    chosen = suite.selected_groups(True, False, names, "cnn T=4", "equal,cosreg")
    assert [g.name for g in chosen] == ["cnn T=4"]
