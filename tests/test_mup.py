"""muP MLP tasks (``parametrization: mup``, :mod:`lopt.tasks.mup`), checked against what
muP promises and against the table of the module docstring.

The promise is the coordinate check of Tensor Programs V: under muP, one (or a few)
optimizer steps change the network's outputs by an amount that does not depend on the
width; under the standard parametrization the change grows with the width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from conftest import REPO

from lopt.config import ConfigError, validate_config
from lopt.tasks import ImageMLP, InnerTraining
from lopt.tasks.mup import mlp_update_scales, with_update_scales

WIDTHS = (64, 256, 1024)


def _task(width: int, parametrization: str, **kw) -> ImageMLP:
    return ImageMLP(input_dim=64, num_classes=10, hidden_sizes=(width, width), parametrization=parametrization, **kw)


def _batch():
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 64))
    y = jax.random.randint(jax.random.PRNGKey(2), (64,), 0, 10)
    return x, y


def _weight_terms(task: ImageMLP, params, x) -> list[jax.Array]:
    """Each layer's weight term ``h_{i-1} @ W_i`` (bias left out; the readout's input times
    its muP multiplier): what muP keeps O(1) per coordinate at every width."""
    h, out, num = x, [], len(params)
    for i in range(num):
        if i == num - 1 and task.parametrization == "mup":
            h = h * (task.mup_base_width / h.shape[-1])
        z = h @ params[f"layer_{i}"]["w"]
        out.append(z)
        h = jax.nn.relu(z + params[f"layer_{i}"]["b"])
    return out


def _changes(width: int, parametrization: str, rule: str, steps: int = 5, lr: float = 1e-2) -> np.ndarray:
    """RMS change of each layer's weight term on a fixed batch after ``steps`` full-batch
    steps (5: from muP's zero readout the hidden layers get gradients from step 2 on)."""
    task, batch = _task(width, parametrization), _batch()
    params = task.init(jax.random.PRNGKey(0))
    opt = with_update_scales(task, optax.adam(lr) if rule == "adam" else optax.sgd(lr), rule)
    state = opt.init(params)
    before = _weight_terms(task, params, batch[0])
    for _ in range(steps):
        updates, state = opt.update(jax.grad(task.loss)(params, batch), state, params)
        params = optax.apply_updates(params, updates)
    after = _weight_terms(task, params, batch[0])
    return np.array([float(jnp.sqrt(jnp.mean((a - b) ** 2))) for a, b in zip(after, before)])


@pytest.mark.parametrize("rule", ["adam", "sgd"])
def test_coordinate_check(rule):
    """Widths 64 -> 1024 (16x). Under muP every layer's weight term moves by the same amount
    at every width: max/min over widths < 2 per layer (measured <= 1.27 with Adam, <= 1.65
    with SGD). Under SP some layer moves >= 3x more at the widest (measured 7.6x with Adam,
    7.7x with SGD). A wrong multiplier breaks it: SGD's input multiplier set to 1 gives 17x,
    Adam's hidden one set to 1 gives 13x, SGD's readout one set to 1 gives 24x (checked by
    hand). Deterministic: fixed keys, full batch."""
    mup = np.array([_changes(w, "mup", rule) for w in WIDTHS])
    sp = np.array([_changes(w, "standard", rule) for w in WIDTHS])
    assert np.all(mup > 0), mup  # every layer learned
    assert np.all(mup.max(0) / mup.min(0) < 2.0), mup
    assert np.max(sp.max(0) / sp.min(0)) > 3.0, sp


def test_update_scales_follow_the_table():
    sizes = (64, 32, 48, 10)  # unequal widths, so fan-in and fan-out cannot be confused
    adam = mlp_update_scales(sizes, "adam")
    assert adam == {
        "layer_0": {"w": 1.0, "b": 1.0},
        "layer_1": {"w": 1 / 32, "b": 1.0},
        "layer_2": {"w": 1.0, "b": 1.0},
    }
    sgd = mlp_update_scales(sizes, "sgd")
    assert sgd == {
        "layer_0": {"w": 32.0, "b": 32.0},
        "layer_1": {"w": 48 / 32, "b": 48.0},
        "layer_2": {"w": 48.0, "b": 1.0},
    }
    assert mlp_update_scales(sizes, "adam", base_width=16)["layer_1"]["w"] == 16 / 32
    assert mlp_update_scales(sizes, "sgd", base_width=16) == {
        "layer_0": {"w": 2.0, "b": 2.0},
        "layer_1": {"w": 48 / 32, "b": 3.0},
        "layer_2": {"w": 3.0, "b": 1.0},
    }
    with pytest.raises(ValueError, match="allowed: adam, sgd"):
        mlp_update_scales(sizes, "lamb")
    with pytest.raises(ValueError, match="hidden layer"):
        mlp_update_scales((64, 10), "adam")


def test_init_and_readout():
    """Zero readout (initial logits = 0, loss = log 10); the other layers as under SP; the
    readout sees its input divided by the last hidden width."""
    sp, mup = _task(128, "standard", init_scale=2.0), _task(128, "mup", init_scale=2.0)
    key = jax.random.PRNGKey(3)
    p_sp, p_mup = sp.init(key), mup.init(key)
    for layer in ("layer_0", "layer_1"):
        np.testing.assert_array_equal(p_sp[layer]["w"], p_mup[layer]["w"])
    assert float(jnp.std(p_mup["layer_1"]["w"])) == pytest.approx(2.0 / np.sqrt(128), rel=0.02)
    assert not np.any(p_mup["layer_2"]["w"])
    x, y = _batch()
    np.testing.assert_array_equal(mup.logits(p_mup, x), 0.0)
    assert float(mup.loss(p_mup, (x, y))) == pytest.approx(np.log(10), rel=1e-6)
    w = jax.random.normal(key, (128, 10))
    h = jax.nn.relu(jax.nn.relu(x @ p_sp["layer_0"]["w"]) @ p_sp["layer_1"]["w"])
    np.testing.assert_allclose(mup.logits({**p_mup, "layer_2": {"w": w, "b": jnp.ones(10)}}, x),
                               (h / 128) @ w + 1.0, rtol=1e-5, atol=1e-6)


def test_at_the_base_width_mup_steps_are_the_standard_ones():
    """With mup_base_width = the width, every Adam-rule multiplier and the readout
    multiplier are 1: the same parameters give the same logits and the same Adam step as
    under SP (only the readout's init differs); at 4x the width the hidden step is / 4."""
    sp, mup = _task(32, "standard"), _task(32, "mup", mup_base_width=32)
    params = sp.init(jax.random.PRNGKey(4))
    x, y = _batch()
    np.testing.assert_array_equal(mup.logits(params, x), sp.logits(params, x))
    grads = jax.grad(sp.loss)(params, (x, y))
    opt = with_update_scales(mup, optax.adam(0.1), "adam")
    got, _ = opt.update(grads, opt.init(params), params)
    want, _ = optax.adam(0.1).update(grads, optax.adam(0.1).init(params), params)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    assert _task(128, "mup", mup_base_width=32).update_scales("adam")["layer_1"]["w"] == 0.25


def test_standard_tasks_keep_the_optimizer_itself():
    opt = optax.adam(1e-3)
    assert with_update_scales(_task(32, "standard"), opt, "adam") is opt
    assert with_update_scales(_task(32, "standard"), opt, None) is opt
    with pytest.raises(ValueError, match="muP-parametrized"):
        with_update_scales(_task(32, "mup"), opt, None)


class _Sign:
    """A stand-in learned optimizer: update = -0.1 * theta * sign(grad) (ignores the horizon)."""

    @staticmethod
    def to_optax(theta, num_steps):
        del num_steps

        def update(grads, state, params=None, **extra):
            return jax.tree.map(lambda g: -0.1 * theta * jnp.sign(g), grads), state

        return optax.GradientTransformation(lambda p: optax.EmptyState(), update)


def test_inner_training_scales_the_learned_update():
    """InnerTraining's step on a muP task = the optimizer's update times the "adam"
    multipliers (hidden-to-hidden weights / fan-in, the rest x 1)."""
    task = _task(32, "mup")
    system = InnerTraining(task, _Sign.to_optax, horizon=10, update_rule="adam")
    theta, key = jnp.float32(2.0), jax.random.PRNGKey(5)
    data = {"train": _batch()}
    state = system.init(theta, key, data)
    # a non-zero readout: at muP's zero readout no gradient reaches the hidden layers
    readout = {"w": jax.random.normal(key, (32, 10)), "b": jnp.zeros(10)}
    state = state._replace(params={**state.params, "layer_2": readout})
    new, _ = system.step(theta, state, 0, key, data)
    batch = task.batch(data, jax.random.split(key)[0], "train")
    grads = jax.grad(task.loss)(state.params, batch)
    scales = mlp_update_scales((64, 32, 32, 10), "adam")
    expected = jax.tree.map(lambda p, g, s: p - 0.2 * jnp.sign(g) * s, state.params, grads, scales)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), new.params, expected)
    delta = new.params["layer_1"]["w"] - state.params["layer_1"]["w"]
    assert float(jnp.max(jnp.abs(delta))) == pytest.approx(0.2 / 32, rel=1e-5)


def test_baselines_get_their_own_rule(digits_root):
    """On a muP task SGD's update is scaled by the "sgd" multipliers and Adam's by the
    "adam" ones; on a standard task neither is touched."""
    from lopt.evaluate import baseline_factory

    task = _task(32, "mup")
    params = task.init(jax.random.PRNGKey(0))
    grads = jax.grad(task.loss)(params, _batch())
    for name, rule, plain in (("sgd", "sgd", optax.sgd(0.1)), ("adam", "adam", optax.adam(0.1))):
        opt = baseline_factory(task, name, "constant", 10)(0.1)
        got, _ = opt.update(grads, opt.init(params), params)
        raw, _ = plain.update(grads, plain.init(params), params)
        want = jax.tree.map(lambda u, s: u * s, raw, mlp_update_scales((64, 32, 32, 10), rule))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)
    std = _task(32, "standard")
    opt = baseline_factory(std, "sgd", "constant", 10)(0.1)
    got, _ = opt.update(grads, opt.init(params), params)
    jax.tree.map(lambda a, g: np.testing.assert_allclose(a, -0.1 * g, rtol=1e-6), got, grads)


def test_every_baseline_has_a_rule_that_fits_its_updates():
    """Each baseline's muP rule matches how its first update scales with the gradient:
    "adam" rules make the same step for g and 100 g (coordinate-normalised), "sgd" rules a
    100x larger one; Adafactor (parameter-scaled) has none."""
    from lopt.optimizers import BASELINE_UPDATE_RULES, BASELINES, make_baseline

    assert set(BASELINE_UPDATE_RULES) == set(BASELINES)
    params = {"w": jnp.zeros((4, 3))}  # zero params: weight decay adds nothing
    g = {"w": jax.random.normal(jax.random.PRNGKey(0), (4, 3))}
    for name, rule in BASELINE_UPDATE_RULES.items():
        if rule is None:
            continue
        opt = make_baseline(name, 0.1)
        small, _ = opt.update(g, opt.init(params), params)
        large, _ = opt.update(jax.tree.map(lambda x: 100 * x, g), opt.init(params), params)
        ratio = float(jnp.linalg.norm(large["w"]) / jnp.linalg.norm(small["w"]))
        assert ratio == pytest.approx(1.0 if rule == "adam" else 100.0, rel=1e-3), (name, ratio)


def test_evaluation_scales_the_learned_optimizer():
    """`lopt evaluate` runs a pretrained optimizer on a muP task with Adam's multipliers,
    and refuses one without a rule (a nominal SGD term)."""
    from lopt.evaluate.jobs import learned_optimizer
    from lopt.optimizers import MLPLOpt, NominalLOpt, Pretrained

    task = _task(32, "mup")
    lopt = MLPLOpt(hidden_size=4, num_layers=1, zero_init_output=False)
    pre = Pretrained(lopt, lopt.init(jax.random.PRNGKey(0)), {})
    params = {**task.init(jax.random.PRNGKey(1)),
              "layer_2": {"w": jax.random.normal(jax.random.PRNGKey(2), (32, 10)), "b": jnp.zeros(10)}}
    grads = jax.grad(task.loss)(params, _batch())
    opt, raw = learned_optimizer(task, pre, 10), pre.to_optax(10)
    got, _ = opt.update(grads, opt.init(params), params, value=1.0)
    want, _ = raw.update(grads, raw.init(params), params, value=1.0)
    scales = mlp_update_scales((64, 32, 32, 10), "adam")
    jax.tree.map(lambda a, b, s: np.testing.assert_allclose(a, b * s, rtol=1e-6), got, want, scales)
    assert float(jnp.max(jnp.abs(want["layer_1"]["w"]))) > 0
    nominal = Pretrained(NominalLOpt(lopt, nominal="sgd"), pre.meta_params, {})
    with pytest.raises(ValueError, match="no muP learning-rate"):
        learned_optimizer(task, nominal, 10)


def test_a_parametrization_mismatch_is_flagged():
    from lopt.config.tasks import ImageMLPTaskConfig
    from lopt.evaluate.jobs import parametrization_mismatch
    from lopt.optimizers import Pretrained

    sp_task, mup_task = ImageMLPTaskConfig(), ImageMLPTaskConfig(parametrization="mup", mup_base_width=32)
    trained_on = {"meta_train_tasks": [mup_task.model_dump()]}
    pre = Pretrained(None, None, trained_on)
    assert parametrization_mismatch(pre, mup_task) is None
    assert "mup (base width 32)" in parametrization_mismatch(pre, sp_task)
    assert "mup (base width 16)" in parametrization_mismatch(pre, ImageMLPTaskConfig(parametrization="mup", mup_base_width=16))
    assert parametrization_mismatch(Pretrained(None, None, {"meta_train_tasks": [sp_task.model_dump()]}), sp_task) is None
    assert parametrization_mismatch(Pretrained(None, None, {}), mup_task) is None  # nothing recorded to compare


def _raw(**edit):
    raw = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    for section, values in edit.items():
        raw[section].update(values)
        raw[section] = {k: v for k, v in raw[section].items() if v is not None}  # None: drop the key
    return raw


def _mup_task(hidden=(16,)):
    return {"kind": "image_mlp", "dataset": "digits", "hidden_sizes": list(hidden), "batch_size": 32,
            "parametrization": "mup"}


@pytest.mark.parametrize(
    "edit,key,message",
    [
        ({"meta_train": {"task": _mup_task(())}}, "meta_train.task.parametrization", "hidden layer"),
        ({"meta_train": {"task": _mup_task()}, "lopt": {"nominal": {"optimizer": "sgd"}}},
         "lopt.nominal.optimizer", "allowed nominal optimizer is adam"),
        ({"meta_train": {"task": {**_mup_task(), "parametrization": "standard", "mup_base_width": 32}}},
         "meta_train.task.mup_base_width", "applies to parametrization: mup only"),
        ({"meta_train": {"task": {**_mup_task(), "mup_base_width": 32}},
          "evaluation": {"tasks": [{"name": "digits_mup", "distribution": "in", "task": _mup_task()}]}},
         "evaluation.tasks[0].task.mup_base_width", "first muP task has 32; allowed: 32"),
        ({"meta_train": {"task": None, "task_family": {"base": _mup_task(), "choices": {"mup_base_width": [16, 32]}, "num_tasks": 2}}},
         "meta_train.task_family.choices.mup_base_width", "one base width for every muP task"),
        ({"evaluation": {"baselines": ["adam", "adafactor"],
                         "tasks": [{"name": "digits_mup", "distribution": "in", "task": _mup_task()}]}},
         "evaluation.baselines", "adafactor has no muP"),
    ],
)
def test_bad_mup_settings_name_the_key(edit, key, message):
    with pytest.raises(ConfigError) as err:
        validate_config(_raw(**edit), "smoke.yaml")
    assert key in str(err.value) and message in str(err.value), str(err.value)


def test_a_study_refuses_a_nominal_sgd_term_on_a_mup_task(tmp_path):
    from lopt.studies.config import load_study

    raw = yaml.safe_load((REPO / "configs" / "paper" / "nres_lopt_cpu.yaml").read_text())
    raw["system"]["task"]["parametrization"] = "mup"
    raw["system"]["lopt"]["nominal"] = {"optimizer": "sgd"}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert "system.lopt.nominal.optimizer" in str(err.value) and "allowed nominal optimizer is adam" in str(err.value)
    raw["system"]["lopt"]["nominal"] = {"optimizer": "adam"}
    path.write_text(yaml.safe_dump(raw))
    assert load_study(path).system.task.parametrization == "mup"


def test_standard_configs_resolve_as_before():
    """`parametrization: standard` is left out of the resolved config (fingerprints and
    recorded configs of earlier runs stay valid); `mup` is recorded and changes it."""
    from lopt.meta_train import fingerprint

    plain = validate_config(_raw())
    explicit = validate_config(_raw(meta_train={"task": {**_mup_task(), "parametrization": "standard"}}))
    assert "parametrization" not in str(plain.to_dict()) and fingerprint(explicit) == fingerprint(plain)
    mup = validate_config(_raw(meta_train={"task": _mup_task()}))
    assert mup.to_dict()["meta_train"]["task"]["parametrization"] == "mup"
    assert fingerprint(mup) != fingerprint(plain)
    assert validate_config(mup.to_dict()) == mup
    based = validate_config(_raw(meta_train={"task": {**_mup_task(), "mup_base_width": 16}}))
    assert based.to_dict()["meta_train"]["task"]["mup_base_width"] == 16 and fingerprint(based) != fingerprint(mup)


def test_meta_training_on_a_mup_task_lowers_the_meta_loss(digits_root):
    """The smoke config meta-trained on a muP 2-layer MLP: the meta-training builds the muP
    task (readout at zero: the first losses are log 10 = 2.30) and NRES lowers the
    meta-loss over 30 outer steps (to < 2.0 on this seed: measured 1.49; 2.27 with
    step_mult 0.1, since muP's readout and hidden multipliers shrink the steps
    of narrow networks, and 1.87 under SP with step_mult 1)."""
    from lopt.meta_train import build_trainer, make_meta_step

    raw = _raw(meta_train={"task": _mup_task((16, 16))}, lopt={"step_mult": 1.0})
    raw["data"]["root"] = str(digits_root)
    trainer = build_trainer(validate_config(raw))
    step = make_meta_step(trainer)
    state = trainer.init()
    losses = []
    for _ in range(30):
        state, metrics = step(state, trainer.data)
        losses.append(float(metrics["meta_loss"]))
    assert losses[0] == pytest.approx(np.log(10), abs=0.05), losses[:3]
    assert np.mean(losses[-5:]) < 2.0, losses
