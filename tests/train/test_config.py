"""Unit tests of the training config, the learning-rate schedules and the optimizer groups."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.errors import ConfigError
from lmstack.train import TrainConfig, apply_overrides, load_config
from lmstack.train.optim import OptimConfig, build_optimizer
from lmstack.train.schedule import DECAYS, ScheduleConfig, lr_at

# ---- lr_at properties ---------------------------------------------------------------------


@st.composite
def schedules(draw, kinds=tuple(DECAYS)):
    lr = draw(st.floats(1e-6, 10.0, allow_nan=False))
    min_lr = draw(st.floats(0.0, 1.0)) * lr
    total = draw(st.integers(1, 5000))
    warmup = draw(st.integers(0, total - 1))  # the decay phase exists
    return ScheduleConfig(lr=lr, min_lr=min_lr, warmup_steps=warmup, total_steps=total,
                          kind=draw(st.sampled_from(kinds)),
                          decay_fraction=draw(st.floats(0.01, 1.0))).check()


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=200, deadline=None)
@given(schedules(), st.integers(0, 20000))
def test_lr_stays_between_min_lr_and_lr(cfg, step):
    lr = lr_at(step, cfg)
    assert cfg.min_lr - 1e-12 <= lr <= cfg.lr + 1e-12


@settings(max_examples=200, deadline=None)
@given(schedules())
def test_warmup_is_monotone_non_decreasing(cfg):
    values = [lr_at(s, cfg) for s in range(cfg.warmup_steps + 1)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert close(values[-1], cfg.lr)  # warmup ends at the peak


@settings(max_examples=200, deadline=None)
@given(schedules(kinds=("cosine", "linear", "wsd")), st.integers(0, 100))
def test_decaying_schedules_end_at_min_lr(cfg, extra):
    assert close(lr_at(cfg.total_steps, cfg), cfg.min_lr)
    assert close(lr_at(cfg.total_steps + extra, cfg), cfg.min_lr)  # and stay there


@settings(max_examples=100, deadline=None)
@given(schedules())
def test_decay_phase_never_rises(cfg):
    values = [lr_at(s, cfg) for s in range(cfg.warmup_steps, cfg.total_steps + 1)]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))


def test_constant_schedule_holds_the_peak():
    cfg = ScheduleConfig(lr=0.5, min_lr=0.0, warmup_steps=0, total_steps=10, kind="constant")
    assert {lr_at(s, cfg) for s in range(20)} == {0.5}


def test_wsd_is_flat_until_its_decay_fraction():
    cfg = ScheduleConfig(lr=1.0, min_lr=0.0, warmup_steps=10, total_steps=110, kind="wsd",
                         decay_fraction=0.25)
    stable_end = 10 + 75  # warmup, then 75% of the remaining 100 steps at the peak
    assert [lr_at(s, cfg) for s in range(10, stable_end + 1)] == [1.0] * 76
    assert lr_at(stable_end + 1, cfg) < 1.0


@pytest.mark.parametrize("fields, word", [
    ({"kind": "step"}, "unknown"),
    ({"lr": 0.0}, "lr > 0"),
    ({"lr": 1e-3, "min_lr": 1e-2}, "min_lr <= lr"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"total_steps": 0}, "total_steps"),
    ({"decay_fraction": 0.0}, "decay_fraction"),
])
def test_bad_schedules_are_refused(fields, word):
    with pytest.raises(ConfigError, match=word):
        ScheduleConfig(**fields).check()


def test_lr_at_needs_a_resolved_total():
    with pytest.raises(ConfigError, match="total_steps"):
        lr_at(0, ScheduleConfig())


# ---- optimizer ----------------------------------------------------------------------------


def test_weight_decay_only_on_matrices():
    from lmstack.models import GPTConfig, build_model

    model = build_model(GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=16))
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1), lr=0.01)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    # Every trainable parameter is in exactly one group (the tied head counts once).
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {g["lr"] for g in opt.param_groups} == {0.01}


@pytest.mark.parametrize("fields", [{"beta1": 1.0}, {"beta2": -0.1}, {"weight_decay": -1},
                                    {"grad_clip": -1}])
def test_bad_optimizer_settings_are_refused(fields):
    with pytest.raises(ConfigError):
        OptimConfig(**fields).check()


# ---- config -------------------------------------------------------------------------------


def test_overrides_parse_toml_literals_and_nest():
    cfg = apply_overrides(TrainConfig(), ["schedule.lr=3e-4", "model.n_layer=2", "steps=7",
                                          "precision=bf16", "optim.grad_clip=0"])
    assert (cfg.schedule.lr, cfg.model["n_layer"], cfg.steps, cfg.precision) == (3e-4, 2, 7, "bf16")
    assert isinstance(cfg.optim.grad_clip, float)  # an int literal for a float field


def test_schedule_spans_the_run_unless_set():
    assert load_config(None, ["steps=40"]).schedule.total_steps == 40
    assert load_config(None, ["steps=40", "schedule.total_steps=100"]).schedule.total_steps == 100


def test_changing_model_type_drops_the_other_models_fields():
    cfg = load_config(None, ["model.model_type=lstm", "model.hidden_size=16"])
    assert cfg.model == {"model_type": "lstm", "hidden_size": 16}
    same = load_config(None, ["model.model_type=gpt"])  # same type: the defaults stay
    assert same.model["n_layer"] == TrainConfig().model["n_layer"]


@pytest.mark.parametrize("override, word", [
    ("optim.lr=1e-3", "OptimConfig has no field 'lr'"),  # the lr lives in the schedule
    ("stepz=3", "unknown setting 'stepz'"),
    ("steps", "not key=value"),
    ("batch_size=0", "batch_size must be >= 1"),
    ("precision=fp8", "precision"),
    ("parallel=tp", "parallel"),
    ("scheduled_sampling=2", "probability"),
])
def test_bad_overrides_are_refused(override, word):
    with pytest.raises(ConfigError, match=word):
        load_config(None, [override])


def test_toml_file_replaces_the_model_table(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('steps = 5\n[model]\nmodel_type = "gru"\nn_embd = 8\n[schedule]\nlr = 0.01\n')
    cfg = load_config(path, ["model.hidden_size=12"])
    assert cfg.steps == 5 and cfg.schedule.lr == 0.01
    assert cfg.model == {"model_type": "gru", "n_embd": 8, "hidden_size": 12}


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_config_round_trips_through_its_dict():
    cfg = load_config(None, ["steps=9", "model.n_layer=1"])
    d = cfg.to_dict()
    assert d["steps"] == 9 and d["schedule"]["total_steps"] == 9 and d["model"]["n_layer"] == 1
