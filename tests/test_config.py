"""Experiment configurations: presets as data, overrides of any field with clear errors, the saved config.json
and what a resumed or evaluated table may change. Nothing here trains."""

from __future__ import annotations

import dataclasses
import json

import pytest

from experiments import multidigit_mnist, nyuv2, sunrgbd
from experiments.cli import Distributed, parse_command
from experiments.configs import (
    ConfigError, Train, apply_override, apply_overrides, config_changes, config_to_dict, load_config, save_config,
    split_override,
)
from experiments.configs import multidigit_mnist as md_config
from experiments.configs import nyuv2 as nyu_config
from experiments.configs import sunrgbd as sun_config
from experiments.pipeline import check_config, run_settings, table_rows
from orthojax.methods import method_names
from orthojax.training import ConfigChangedError


def test_presets_hold_the_papers_protocols():
    paper = nyu_config.get_config("paper")
    assert (paper.train.epochs, paper.train.batch_size, paper.train.lr) == (25, 2, 1e-4)
    assert paper.data.image_size == (320, 320) and paper.data.target_size == (80, 80) and paper.model.width == 1.0
    assert paper.methods["cosreg"] == {"alpha": 10.0, "scale_alpha_by_loss": True}
    sun = sun_config.get_config("paper")
    assert (sun.train.batch_size, sun.train.lr_decay_every_epochs, sun.train.lr_decay_factor) == (3, 2, 0.5)
    md = md_config.get_config("paper")
    assert md.train.seeds == (0, 1, 2, 3, 4) and md.data.sizes == (16000, 4000, 5000) and md.model.filters == 20
    assert md_config.get_config("quick").rows == tuple(multidigit_mnist.ROWS)
    with pytest.raises(ConfigError, match="unknown preset 'huge' for nyuv2; presets: quick, paper"):
        nyu_config.get_config("huge")


def test_save_load_round_trip_then_override(tmp_path):
    config = apply_overrides(md_config.get_config("quick"), [
        "train.seeds=0,4", "data.sizes=64,32,32", "methods.CosReg.alpha=0.5", "rows=equal,cosreg",
        "methods.tests._user_method:my_method.first_weight=3"])
    path = save_config(config, str(tmp_path))
    assert json.load(open(path))["train"]["seeds"] == [0, 4]
    loaded = load_config(str(tmp_path), md_config.get_config("paper"))  # the template gives the classes only
    assert loaded == config
    assert isinstance(loaded.data.sizes, tuple) and isinstance(loaded.sweep.lrs, tuple)
    assert loaded.methods == {"cosreg": {"alpha": 0.5}, "tests._user_method:my_method": {"first_weight": 3.0}}
    again = apply_override(loaded, "train.lr", "3e-4")
    assert again.train.lr == 3e-4 and again.train.seeds == (0, 4)
    assert config_changes(loaded, again) == [("train.lr", 1e-3, 3e-4)]
    assert load_config(str(tmp_path / "nothing"), config) is None


@pytest.mark.parametrize("override, field, value", [
    ("train.lr=3e-4", ("train", "lr"), 3e-4),
    ("train.seeds=3", ("train", "seeds"), (0, 1, 2)),
    ("train.max_steps=none", ("train", "max_steps"), None),
    ("train.vmap_seeds=false", ("train", "vmap_seeds"), False),
    ("data.image_size=32, 48", ("data", "image_size"), (32, 48)),
    ("data.protocol=mtan", ("data", "protocol"), "mtan"),
    ("model.batchnorm=0", ("model", "batchnorm"), False),
])
def test_override_converts_text_by_the_fields_type(override, field, value):
    config = apply_overrides(nyu_config.get_config("quick"), [override])
    assert getattr(getattr(config, field[0]), field[1]) == value


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown field 'train.lrr'; fields here: train.epochs, train.batch_size, train.lr,"),
    ("bogus.x=1", "unknown field 'bogus.x'; fields here: experiment, preset, train, data, model, rows"),
    ("train=1", "train is a section; set one of its fields, e.g. train.epochs=..."),
    ("train.epochs=two", "train.epochs: expected int; got 'two'"),
    ("train.epochs=1.5", "train.epochs: expected int; got '1.5'"),
    ("train.lr=nan", "train.lr: expected float; got 'nan'"),
    ("train.batch_size=0", "train.batch_size must be an integer >= 1; got 0"),
    ("train.seeds=0,1,1", "train.seeds must be distinct (seeds [1] would share a workdir)"),
    ("data.image_size=32", "data.image_size: expected 2 comma-separated int; got '32'"),
    ("data.protocol=nyu", "data.protocol: expected one of paper, mtan; got 'nyu'"),
    ("model.width=-1", "model.width must be a finite number > 0; got -1.0"),
    ("methods.bogus.alpha=1", "methods.bogus.alpha: unknown method 'bogus'"),
    ("methods.cosreg.alpah=1", "methods.cosreg.alpah: cosreg has no hyper-parameter 'alpah'; it takes alpha: float"),
    ("methods.cosreg.alpha=big", "methods.cosreg.alpha: cosreg: hyper-parameter 'alpha': cannot read 'big' as a number"),
    ("methods.cosreg.scale_alpha_by_loss=maybe", "cannot read 'maybe' as a boolean"),
    ("methods.cosreg=1", "methods.cosreg: expected methods.<method>.<hyper-parameter>=VALUE"),
    ("methods.tests._nowhere:f.x=1", "cannot import module 'tests._nowhere'"),
])
def test_every_bad_override_names_the_field_and_what_was_expected(override, message):
    with pytest.raises(ConfigError) as error:
        apply_overrides(nyu_config.get_config("quick"), [override])
    assert message in str(error.value)


def test_split_override_needs_field_equals_value():
    assert split_override(" train.lr = 1e-3 ") == ("train.lr", "1e-3")
    with pytest.raises(ConfigError, match="expected FIELD=VALUE"):
        split_override("train.lr")


def test_bad_override_on_the_command_line_is_one_error_line(capsys):
    for argv, expected in ((["--set", "train.lrr=1"], "argument --set: unknown field 'train.lrr'"),
                           (["--lr", "-1"], "argument --lr: train.lr must be a finite number > 0; got -1.0"),
                           (["--config.methods.cosreg.alpah", "1"], "cosreg has no hyper-parameter 'alpah'"),
                           (["--set", "train.lr"], "argument --set: override 'train.lr': expected FIELD=VALUE")):
        with pytest.raises(SystemExit) as exit_info:
            parse_command(nyuv2.EXPERIMENT, argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("python -m experiments.nyuv2: error: ") and expected in err, err


def test_shorthands_set_and_config_spellings_agree_in_command_line_order():
    one = parse_command(nyuv2.EXPERIMENT, ["--lr", "3e-4", "--alpha", "1", "--seeds", "2", "--no-batchnorm",
                                           "--no-scale-alpha-by-loss", "--protocol", "mtan", "--max-steps", "4"])
    two = parse_command(nyuv2.EXPERIMENT, ["--set", "train.lr=3e-4", "--config.methods.cosreg.alpha=1",
                                           "--config.train.seeds", "2", "--set", "model.batchnorm=false",
                                           "--set", "methods.cosreg.scale_alpha_by_loss=false",
                                           "--set", "data.protocol=mtan", "--set", "train.max_steps=4"])
    assert one.config == two.config
    assert one.config.train.seeds == (0, 1) and one.config.methods["cosreg"] == {"alpha": 1.0,
                                                                                  "scale_alpha_by_loss": False}
    last = parse_command(nyuv2.EXPERIMENT, ["--lr", "1", "--set", "train.lr=2"])
    assert last.config.train.lr == 2.0
    settings = run_settings(one.config, one)
    assert (settings.learning_rate, settings.seeds, settings.max_steps, settings.resume) == (3e-4, (0, 1), 4, False)


def test_methods_all_user_references_and_bad_references():
    assert parse_command(nyuv2.EXPERIMENT, ["--methods", "all"]).config.rows == tuple(method_names())
    rows = parse_command(multidigit_mnist.EXPERIMENT, ["--methods", "EW,tests._user_method:my_method",
                                                       "--set", "methods.tests._user_method:my_method.first_weight=3"])
    assert rows.config.rows == ("equal", "tests._user_method:my_method")
    built = table_rows(rows.config, multidigit_mnist.ROWS)
    assert [(r.key, r.method, dict(r.method_kwargs)) for r in built] == [
        ("equal", "equal", {}), ("tests._user_method.my_method", "tests._user_method:my_method", {"first_weight": 3.0})]


def test_bad_user_reference_is_an_error_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_command(nyuv2.EXPERIMENT, ["--methods", "tests._user_method:nothing"])
    assert exit_info.value.code == 2
    assert "module 'tests._user_method' has no attribute 'nothing'" in capsys.readouterr().err


def test_table_rows_fill_method_hyperparameters_and_keep_the_paper_rows_own():
    config = apply_overrides(md_config.get_config("quick"), ["methods.cosreg.alpha=3", "rows=cosreg,cosreg_bn"])
    rows = {r.key: r for r in table_rows(config, multidigit_mnist.ROWS)}
    assert rows["cosreg"].method_kwargs == {"alpha": 3.0} and rows["cosreg"].label == "CosReg (alpha=3)"
    assert rows["cosreg_bn"].method_kwargs == {"alpha": 0.1}  # the paper's row fixes its own alpha


def test_list_methods_is_generated_from_the_registry(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_command(sunrgbd.EXPERIMENT, ["--list-methods"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in method_names():
        assert f"\n{name}" in "\n" + out, name
    assert "alpha: float = 10.0" in out and "penalty weight" in out


def test_resume_reuses_the_saved_config_and_refuses_changes(tmp_path, capsys):
    workdir = str(tmp_path / "table")
    saved = apply_overrides(nyu_config.get_config("paper"), ["train.lr=3e-4", "rows=equal"])
    save_config(saved, workdir)
    resumed = parse_command(nyuv2.EXPERIMENT, ["--resume", "--workdir", workdir, "--max-steps", "7"])
    assert resumed.config == dataclasses.replace(saved, train=dataclasses.replace(saved.train, max_steps=7))
    check_config(resumed)  # max_steps may change
    changed = parse_command(nyuv2.EXPERIMENT, ["--resume", "--workdir", workdir, "--lr", "1e-3", "--width", "2"])
    with pytest.raises(ConfigChangedError, match=r"model.width: 1.0 -> 2.0; train.lr: 0.0003 -> 0.001"):
        check_config(changed)
    with pytest.raises(SystemExit):
        parse_command(nyuv2.EXPERIMENT, ["--resume", "--workdir", workdir, "--preset", "quick"])
    assert "was run with preset 'paper'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_command(nyuv2.EXPERIMENT, ["--eval-only", "--workdir", str(tmp_path / "none")])
    assert "config.json does not exist" in capsys.readouterr().err


def test_a_damaged_saved_config_is_named(tmp_path, capsys):
    data = config_to_dict(sun_config.get_config("quick"))
    data["train"]["learning_rate"] = 1.0
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"config.json: unknown field\(s\) train.learning_rate; expected train.epochs"):
        load_config(str(tmp_path), sun_config.get_config("quick"))
    with pytest.raises(ConfigError, match="is a 'sunrgbd' configuration, not 'nyuv2'"):
        load_config(str(tmp_path), nyu_config.get_config("quick"))
    with pytest.raises(SystemExit):
        parse_command(sunrgbd.EXPERIMENT, ["--resume", "--workdir", str(tmp_path)])
    assert "train.learning_rate" in capsys.readouterr().err


def test_train_section_validates_itself():
    with pytest.raises(ConfigError, match="train.seeds must be a non-empty tuple"):
        Train(epochs=1, batch_size=1, lr=1.0, seeds=())
    with pytest.raises(ConfigError, match="train.lr_decay_factor must be a number in"):
        Train(epochs=1, batch_size=1, lr=1.0, lr_decay_factor=2.0)


def test_multi_host_flags(capsys):
    command = parse_command(nyuv2.EXPERIMENT, ["--coordinator-address", "127.0.0.1:1234", "--num-processes", "2",
                                               "--process-id", "1"])
    assert command.distributed == Distributed("127.0.0.1:1234", 2, 1)
    assert parse_command(nyuv2.EXPERIMENT, ["--distributed"]).distributed.kwargs() == {}
    assert parse_command(nyuv2.EXPERIMENT, []).distributed is None
    with pytest.raises(SystemExit):
        parse_command(nyuv2.EXPERIMENT, ["--num-processes", "2", "--process-id", "2"])
    assert "--process-id: 2 is not below --num-processes 2" in capsys.readouterr().err


@pytest.mark.parametrize("module", [md_config, nyu_config, sun_config], ids=["multidigit", "nyuv2", "sunrgbd"])
def test_paper_preset_keeps_the_papers_alpha_and_the_quick_preset_says_where_it_differs(module):
    paper, quick = module.get_config("paper"), module.get_config("quick")
    assert paper.methods["cosreg"]["alpha"] == 10.0
    if quick.methods["cosreg"]["alpha"] != paper.methods["cosreg"]["alpha"]:
        assert "--preset paper" in module.__doc__ and "alpha 10" in module.__doc__
