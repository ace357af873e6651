"""Silent misconfiguration: method names as the field spells them, and unknown names caught before training."""

from __future__ import annotations


import pytest

from experiments import multidigit_mnist, nyuv2, pipeline
from experiments.cli import parse_command, parse_rows, resolve_row
from experiments.runner import Row, RunSettings
from orthojax.methods import get_method, method_names
from orthojax.methods.registry import close_method_names, resolve_method_name

SPELLINGS = {
    "equal": ["Equal", "EW", "ew", "equal_weight", "equal_weights", "Equal-Weighting", "EQUAL"],
    "uncertainty": ["UW", "Uncertainty", "uncertainty_weighting", "Uncertainty Weighting"],
    "single_task": ["STL", "single_task", "Single-Task", "singletask"],
    "pcgrad": ["PCGrad", "PC-Grad"],
    "mgda": ["MGDA"],
    "imtl_g": ["IMTL-G", "IMTL_G", "imtlg", "IMTL G"],
    "cagrad": ["CAGrad"],
    "gradnorm": ["GradNorm", "grad_norm"],
    "dwa": ["DWA"],
    "famo": ["FAMO"],
    "rotograd": ["RotoGrad"],
    "rotograd_norm": ["RotoGrad-Norm"],
    "aligned_mtl": ["Aligned-MTL", "AlignedMTL", "aligned_mtl"],
    "upgrad": ["UPGrad"],
    "dualproj": ["DualProj"],
    "cosreg": ["CosReg", "COSREG", "cos_reg"],
    "recon": ["Recon"],
}


@pytest.mark.parametrize("name, spellings", SPELLINGS.items(), ids=list(SPELLINGS))
def test_registry_accepts_the_fields_spellings(name, spellings):
    assert name in method_names()
    for spelling in spellings:
        assert resolve_method_name(spelling) == name, spelling


def test_get_method_builds_from_any_spelling():
    assert get_method("EW").name == "equal"
    assert get_method("IMTL-G").name == "imtl_g"
    assert get_method("CosReg", alpha=0.5).name == "cosreg"


@pytest.mark.parametrize("typo, meant", [("pcgard", "pcgrad"), ("cosreq", "cosreg"), ("uncertainy", "uncertainty"),
                                         ("equall", "equal")])
def test_unknown_method_names_close_matches_and_all_valid_names(typo, meant):
    with pytest.raises(KeyError, match="unknown method") as e:
        get_method(typo)
    message = str(e.value)
    assert f"did you mean '{meant}'" in message
    assert all(name in message for name in method_names())
    assert close_method_names(typo)[0] == meant


def test_methods_flag_resolves_spellings_to_rows():
    command = parse_command(multidigit_mnist.EXPERIMENT, ["--methods", "Equal,STL,CosReg_BN,IMTL-G,uw",
                                                          "--set", "methods.recon.base=CosReg"])
    assert command.config.rows == ("equal", "single_task", "cosreg_bn", "imtl_g", "uncertainty")
    assert parse_command(multidigit_mnist.EXPERIMENT, []).config.rows == tuple(multidigit_mnist.TABLE1_ROWS)
    assert resolve_row("BatchNorm", tuple(multidigit_mnist.ROWS)) == "batchnorm"


@pytest.mark.parametrize("argv, expected", [
    (["--methods", "equal,bogus"], "argument --methods: rows: unknown row 'bogus'; valid rows: "),
    (["--methods", "pcgard,nope"], "unknown rows 'pcgard' (did you mean 'pcgrad'?), 'nope'; valid rows: "),
    (["--methods", "equal,EW"], "row 'equal' is given twice ('equal' and 'EW')"),
    (["--methods", ","], "no rows given"),
])
def test_bad_methods_flag_is_a_one_line_argparse_error(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_command(multidigit_mnist.EXPERIMENT, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m experiments.multidigit_mnist: error: "), err
    assert expected in err
    if "valid rows" in expected:
        assert "dropout" in err and "cosreg_bn" in err and "aligned_mtl" in err


@pytest.mark.parametrize("experiment", [multidigit_mnist, nyuv2], ids=["multidigit", "nyuv2"])
def test_unknown_row_fails_before_anything_loads_or_trains(experiment, monkeypatch, capsys, tmp_path):
    def must_not_run(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(pipeline, "run_table", must_not_run)
    monkeypatch.setattr(pipeline, "setup_runtime", must_not_run)
    with pytest.raises(SystemExit) as exit_info:
        experiment.main(["--methods", "equal,bogus", "--max-steps", "1", "--workdir", str(tmp_path / "w"),
                         "--no-progress"])
    assert exit_info.value.code == 2
    assert "unknown row 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_run_benchmark_checks_every_row_before_the_first_trains(monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline, "run_table", lambda *a, **k: pytest.fail("training started"))
    settings = RunSettings(epochs=1, batch_size=2, learning_rate=1e-3, seeds=(0,))
    rows = [Row("equal", "Equal", "equal"), Row("bogus", "Bogus", "bogus")]
    with pytest.raises(KeyError, match=r"row 'bogus': unknown method 'bogus'"):
        pipeline.run_benchmark(None, rows, settings, str(tmp_path / "w"), title="t", columns=(), paper={},
                               data_info={}, protocol={})
    assert not (tmp_path / "w").exists()
    checked, _ = pipeline.check_rows([Row("ew", "EW", "EW"), Row("recon", "Recon", "Recon")], settings)
    assert [r.method for r in checked] == ["equal", "recon"]
    with pytest.raises(ValueError, match="more than once"):
        pipeline.check_rows([Row("equal", "a", "equal"), Row("equal", "b", "EW")], settings)


def test_parse_rows_is_usable_alone():
    assert parse_rows("Equal cosreg", ("equal", "dropout")) == ["equal", "cosreg"]


def test_resume_without_a_table_in_the_workdir_is_refused(tmp_path, capsys):
    """A mistyped --workdir with --resume must not start a new table from step 0."""
    workdir = tmp_path / "no_table_here"
    with pytest.raises(SystemExit) as exit_info:
        nyuv2.main(["--resume", "--workdir", str(workdir), "--no-progress"])
    assert exit_info.value.code == 2
    assert "no table to resume" in capsys.readouterr().err
    assert not workdir.exists()


def test_a_method_hyper_parameter_refused_before_training_is_one_error_line(tmp_path, capsys):
    workdir = tmp_path / "alpha"
    with pytest.raises(SystemExit) as exit_info:
        pipeline.run_command(lambda: nyuv2.main(["--methods", "cosreg", "--alpha", "-1", "--max-steps", "1",
                                                 "--workdir", str(workdir), "--no-progress"]))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "error: alpha must be a finite non-negative number; got -1.0" in err and "Traceback" not in err
    assert not (workdir / "cosreg").exists()  # nothing was trained
