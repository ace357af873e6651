"""The method registry: hyper-parameters generated from a factory, command-line parsing, registration,
user references, building with a run's context, and multi-stage protocols driven through a fake trainer."""

from __future__ import annotations

import sys
import types
from typing import Literal, Optional, Sequence

import numpy as np
import pytest

from orthojax.methods import (
    REQUIRED,
    Hyperparameter,
    Method,
    MethodSpec,
    Outcome,
    PlannedStage,
    RunContext,
    StageResult,
    Stages,
    build_method,
    equal,
    get_method,
    method_names,
    method_spec,
    register,
)
from orthojax.methods import registry
from orthojax.methods.recon import conflict_scores, select_conflict_layers

CTX = RunContext(num_tasks=3, learning_rate=1e-3, steps_per_epoch=7, latent_size=5,
                 shared_layer_names=("encoder/conv1", "encoder/conv2", "encoder/conv3"))


def _factory(alpha: float, *, on: Literal["a", "b"] = "a", sizes: Sequence[int] = (1, 2), flag: bool = False,
             name: Optional[str] = None, extra: dict = None) -> Method:
    """A test factory.

    Args:
      alpha: the weight, > 0;
        continued on a second line.
      on: where.
      sizes: some sizes.
      flag: a switch.
    """
    return equal()


def test_hyperparameters_come_from_signature_annotations_and_docstring():
    hps = {hp.name: hp for hp in registry.hyperparameters_of(_factory, "mine")}
    assert list(hps) == ["alpha", "on", "sizes", "flag", "name", "extra"]
    assert hps["alpha"] == Hyperparameter("alpha", float, REQUIRED, "the weight, > 0; continued on a second line.",
                                          method="mine")
    assert hps["alpha"].required and not hps["on"].required
    assert (hps["on"].type, hps["on"].choices, hps["on"].default) == (str, ("a", "b"), "a")
    assert (hps["sizes"].type, hps["sizes"].item_type) == (tuple, int)
    assert (hps["name"].type, hps["name"].nullable, hps["name"].help) == (str, True, "")
    assert hps["extra"].type is dict


@pytest.mark.parametrize("name, text, value", [
    ("alpha", "0.5", 0.5), ("alpha", "3", 3.0), ("flag", "true", True), ("flag", "0", False),
    ("flag", "No", False), ("sizes", "1, 2,3", (1, 2, 3)), ("sizes", "", ()), ("on", "b", "b"),
    ("name", "none", None), ("name", "x", "x"), ("extra", "a=1, b = x", {"a": "1", "b": "x"}),
])
def test_parse_reads_command_line_values(name, text, value):
    hp = {hp.name: hp for hp in registry.hyperparameters_of(_factory, "mine")}[name]
    parsed = hp.parse(text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("name, text, expected", [
    ("alpha", "fast", "a number"), ("flag", "maybe", "a boolean"), ("sizes", "1,x", "list of int"),
    ("on", "c", "not one of a, b"), ("alpha", "none", "a number"), ("extra", "a", "key=value"),
])
def test_parse_errors_name_method_hyperparameter_text_and_expectation(name, text, expected):
    hp = {hp.name: hp for hp in registry.hyperparameters_of(_factory, "mine")}[name]
    with pytest.raises(ValueError) as info:
        hp.parse(text)
    message = str(info.value)
    assert "mine" in message and repr(name) in message and repr(text) in message and expected in message


def test_builtin_hyperparameters_and_context():
    assert method_spec("cosreg").hyperparameter("implementation").choices == ("auto", "split", "fast", "reference")
    assert method_spec("CosReg").summary.startswith("Minimises")
    rotograd = build_method("rotograd", CTX)
    assert rotograd.hyperparameters["latent_size"] == 5 and rotograd.hyperparameters["learning_rate"] == 5e-4
    assert build_method("rotograd", CTX, learning_rate=0.1).hyperparameters["learning_rate"] == 0.1  # user wins
    assert build_method("DWA", CTX).hyperparameters["period"] == 7
    assert build_method("dwa").hyperparameters["period"] == 1  # no run: the default
    assert build_method("recon", CTX).hyperparameters["layers"] == CTX.shared_layer_names
    assert get_method("EW").hyperparameters == {}


def test_build_method_errors_list_the_valid_hyperparameters():
    with pytest.raises(TypeError, match=r"unknown hyper-parameter\(s\) 'alfa'.*alpha: float = 10\.0"):
        build_method("cosreg", alfa=1.0)
    with pytest.raises(TypeError, match=r"missing required.*'latent_size'.*latent_size: int \(required\)"):
        build_method("rotograd")  # no context: nothing gives the representation size
    with pytest.raises(TypeError, match="missing required"):
        build_method("rotograd", CTX._replace(latent_size=None))
    with pytest.raises(KeyError, match="did you mean 'cosreg'"):
        method_spec("cosrg")


def test_register_as_decorator_aliases_duplicates_and_compatibility_tables():
    name = "test_registry_weighting"
    try:
        @register(name, aliases=("trw",), context={"scale": lambda ctx: ctx.num_tasks})
        def factory(scale: float = 1.0) -> Method:
            """Scaled equal weights.

            Args:
              scale: the common weight.
            """
            return equal()._replace(name=name)

        assert name in method_names() and registry.METHODS[name] is factory and registry.ALIASES["trw"] == name
        assert method_spec("TRW").name == name
        assert build_method("T-R-W", CTX).hyperparameters == {"scale": 3}
        with pytest.raises(ValueError, match="already registered"):
            register(name, factory)
        with pytest.raises(ValueError, match="already registered"):
            register("Test-Registry-Weighting", factory)  # the same name in another spelling
        with pytest.raises(ValueError, match="alias 'ew' already names 'equal'"):
            register("another_test_method", factory, aliases=("ew",))
        with pytest.raises(ValueError, match="context names 'nope'"):
            register("another_test_method", factory, context={"nope": lambda ctx: 1})
        assert "another_test_method" not in method_names()
    finally:
        registry._SPECS.pop(name, None)
        registry.METHODS.pop(name, None)
        registry.ALIASES.pop("trw", None)


@pytest.fixture
def user_module():
    module = types.ModuleType("orthojax_test_user_methods")

    def scaled(weight: float = 2.0) -> Method:
        """Weights (weight, 1).

        Args:
          weight: the first task's weight.
        """
        from orthojax.methods import weighted_sum
        return weighted_sum((weight, 1.0), name="scaled")

    module.scaled = scaled
    module.instance = equal()
    module.spec = MethodSpec(name="spec_method", factory=scaled,
                             hyperparameters=registry.hyperparameters_of(scaled, "spec_method"))
    module.not_callable = 3
    module.not_a_method = lambda: "oops"
    sys.modules[module.__name__] = module
    yield module.__name__
    del sys.modules[module.__name__]


def test_user_references_factory_spec_and_instance(user_module):
    spec = method_spec(f"{user_module}:scaled")
    assert spec.name == f"{user_module}:scaled" and spec.hyperparameter("weight").default == 2.0
    assert build_method(f"{user_module}:scaled", weight=3.0).hyperparameters == {"weight": 3.0}
    assert method_spec(f"{user_module}:spec").name == "spec_method"
    instance = method_spec(f"{user_module}:instance")
    assert instance.hyperparameters == () and build_method(f"{user_module}:instance").name == "equal"
    with pytest.raises(TypeError, match="takes no hyper-parameters"):
        build_method(f"{user_module}:instance", weight=1.0)


@pytest.mark.parametrize("reference, expected", [
    ("no_such_module_for_orthojax:f", "cannot import module 'no_such_module_for_orthojax'"),
    ("{mod}:missing", "has no attribute 'missing'"),
    ("{mod}:not_callable", "not callable"),
    ("{mod}:", "malformed"),
])
def test_user_reference_errors(user_module, reference, expected):
    with pytest.raises(KeyError, match=expected):
        method_spec(reference.format(mod=user_module))


def test_user_factory_must_return_a_method(user_module):
    with pytest.raises(TypeError, match="not an orthojax.methods.Method"):
        build_method(f"{user_module}:not_a_method")


# ------------------------------------------------------------------------------------------- protocols


class FakeStages:
    """A trainer that trains nothing: each stage returns the given per-layer cosine history."""

    def __init__(self, num_tasks=3, num_seeds=2, cosines=None):
        self.num_tasks, self.num_seeds, self.cosines = num_tasks, num_seeds, cosines
        self.calls, self.written = [], {}

    def shared_layer_names(self, model_kwargs={}):
        return CTX.shared_layer_names

    def train(self, stage, method, hyperparameters, *, model_kwargs={}, epochs=None):
        self.calls.append((stage, method, dict(hyperparameters), dict(model_kwargs), epochs))
        metric = lambda name: {"layer_cosines": self.cosines}[name]
        return StageResult(stage, (None,) * self.num_seeds, metric)

    def write_json(self, name, obj):
        self.written[name] = obj
        return name


def test_fake_stages_is_a_stages():
    assert isinstance(FakeStages(), Stages)


def test_recon_protocol_scores_selects_and_retrains_with_its_hyperparameters():
    rng = np.random.default_rng(0)
    cosines = rng.uniform(-1, 1, size=(2, 5, 3, 3, 3))  # (S, steps, L, T, T)
    stages = FakeStages(cosines=cosines)
    spec = method_spec("recon")
    hps = {"k": 2, "s": -0.1, "base": "CosReg", "base_hyperparameters": {"alpha": "0.5"}, "stage1_epochs": 3}
    planned = spec.protocol.plan(stages, hps)
    assert [(p.stage, p.method, p.settled) for p in planned] == [("stage1", "recon", True),
                                                                  ("retrain", "cosreg", False)]
    assert planned[0].hyperparameters == {"layers": CTX.shared_layer_names} and planned[0].epochs == 3
    assert planned[1].hyperparameters == {"alpha": 0.5}
    assert stages.calls == []  # planning trains nothing

    outcome = spec.protocol.run(stages, hps)
    expected_scores = np.asarray(conflict_scores(cosines.reshape(-1, 3, 3, 3), -0.1))
    selected = select_conflict_layers(expected_scores, CTX.shared_layer_names, 2)
    assert stages.written["recon_scores.json"]["scores"] == expected_scores.tolist()
    assert stages.written["recon_scores.json"]["num_steps"] == 10
    assert stages.calls[1] == ("retrain", "cosreg", {"alpha": 0.5}, {"task_specific_layers": selected}, None)
    assert outcome == Outcome(stage="retrain", extra={"recon_layers": [list(selected)] * 2})


def test_recon_protocol_checks_its_hyperparameters_before_training():
    stages = FakeStages()
    with pytest.raises(ValueError, match="k must be"):
        method_spec("recon").protocol.plan(stages, {"k": -1})
    with pytest.raises(ValueError, match="threshold S"):
        method_spec("recon").protocol.plan(stages, {"s": 2.0})
    with pytest.raises(TypeError, match="unknown hyper-parameter"):
        method_spec("recon").protocol.plan(stages, {"base": "cosreg", "base_hyperparameters": {"alfa": 1}})
    with pytest.raises(ValueError, match="protocol"):
        method_spec("recon").protocol.plan(stages, {"base": "single_task"})
    assert stages.calls == []


def test_single_task_protocol_one_stage_per_task():
    stages = FakeStages(num_tasks=3)
    protocol = method_spec("STL").protocol
    assert protocol.plan(stages, {}) == [PlannedStage(f"task_{t}", "single_task", {"task": t}) for t in range(3)]
    assert protocol.run(stages, {}) == Outcome(task_stages=("task_0", "task_1", "task_2"))
    assert [c[2] for c in stages.calls] == [{"task": 0}, {"task": 1}, {"task": 2}]
    with pytest.raises(ValueError, match="one network per task"):
        protocol.plan(stages, {"task": 1})


def test_outcome_needs_exactly_one_of_stage_and_task_stages():
    with pytest.raises(ValueError, match="exactly one"):
        Outcome()
    with pytest.raises(ValueError, match="exactly one"):
        Outcome(stage="a", task_stages=("a",))


def test_every_method_has_one_distinct_label_and_states_its_model_options():
    labels = {name: method_spec(name).label for name in method_names()}
    assert all(isinstance(label, str) and label for label in labels.values())
    assert len(set(labels.values())) == len(labels), labels
    assert labels["nash_mtl"] == "Nash-MTL" and labels["equal"] == "Equal weights"
    assert method_spec("recon").model_options == ("task_specific_layers",)
    assert method_spec("cosreg").model_options == ()


def test_register_takes_a_label_and_model_options():
    name = "test_labelled_method"

    def factory(scale: float = 1.0):
        """A labelled test method."""
        return build_method("equal")

    try:
        spec = register(name, factory, label="Labelled (test)", model_options=("dropout_rate",))
        assert spec.label == "Labelled (test)" and spec.model_options == ("dropout_rate",)
        assert method_spec(name).label == "Labelled (test)"
    finally:
        registry._SPECS.pop(name, None)
        registry.METHODS.pop(name, None)
    spec_default = registry._make_spec("unregistered_x", factory, (), None, None, None)
    assert spec_default.label == "unregistered_x" and spec_default.model_options == ()
