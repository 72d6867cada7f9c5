"""Episodes of random length (``meta_train.min_horizon``), checked against their definition.

lopt.unroll documents: episode ``e`` of a particle with raw key ``k`` lasts
``T_e = clip(floor(exp(log T_min + u (log(T_max + 1) - log T_min))), T_min, T_max)`` steps,
``u = uniform(fold_in(fold_in(k, e), _HORIZON))``, and runs under ``system.with_horizon(T_e)``.
A probe system reports the length it runs under in every step's loss, so the expected losses
can be rebuilt outside the engine by stepping (episode, step) by hand.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from conftest import REPO

from lopt.config import ConfigError, validate_config
from lopt.unroll import _HORIZON, episode_horizon, init_particles, unroll


@dataclasses.dataclass(frozen=True)
class LengthProbe:
    """State: the length the episode was initialised under; a step's loss: 1000 x that
    length + the length the step runs under (they must agree), + 2 x a draw of the step key."""

    horizon: int
    min_horizon: int | None = None

    def with_horizon(self, horizon):
        return dataclasses.replace(self, horizon=horizon)

    def init(self, theta, key, data):
        return jnp.asarray(self.horizon, jnp.float32)

    def step(self, theta, s, t, key, data):
        return s, 1000.0 * s + self.horizon + 2.0 * jax.random.uniform(key)


def _length(key, episode, low, high):
    """T_e from the documented formula, in float64 numpy after the float32 uniform draw."""
    u = float(jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, episode), _HORIZON)))
    log_t = np.float32(np.log(np.float32(low)) + np.float32(u) * (np.log(np.float32(high + 1)) - np.log(np.float32(low))))
    return int(np.clip(np.floor(np.exp(log_t)), low, high))


def _expected(keys, offsets, low, high, num_steps):
    out = np.zeros((len(keys), num_steps))
    for p, (k, t) in enumerate(zip(keys, offsets)):
        e, t, length = 0, int(t), _length(k, 0, low, high)
        for j in range(num_steps):
            step_key = jax.random.split(jax.random.fold_in(k, e))[1]
            out[p, j] = 1001.0 * length + 2.0 * float(jax.random.uniform(jax.random.fold_in(step_key, t)))
            t += 1
            if t == length:
                e, t = e + 1, 0
                length = _length(k, e, low, high)
    return out


@pytest.mark.parametrize("step_unlock", [True, False])
def test_each_episode_runs_its_own_drawn_length(step_unlock):
    low, high, trunc = 4, 12, 3
    system = LengthProbe(high, low)
    theta = jnp.zeros(())
    state = init_particles(system, theta, jax.random.PRNGKey(0), 8, step_unlock=step_unlock)
    keys, offsets = np.asarray(state.key), np.asarray(state.step)
    first = [_length(k, 0, low, high) for k in keys]
    assert all(0 <= o < n for o, n in zip(offsets, first))  # a start inside the first episode
    np.testing.assert_array_equal(keys[0::2], keys[1::2])  # the copies of a pair share lengths
    thetas = jnp.zeros((8,))
    run = jax.jit(lambda st: unroll(system, thetas, thetas, st, trunc, paired=True))
    windows = 20  # 60 steps: 5-15 episodes per particle, resets inside and at the end of windows
    got = []
    for _ in range(windows):
        state, window = run(state)
        got.append(np.asarray(window.losses))
    got = np.concatenate(got, axis=1)
    # Lengths are integers <= 12 recorded x 1001: a wrong length or an init under another
    # episode's length is off by >= 1; float32 rounding of ~1.2e4 is below 1e-3.
    np.testing.assert_allclose(got, _expected(keys, offsets, low, high, windows * trunc), rtol=0, atol=2e-3)
    lengths = np.round((got - 2.0) / 1001.0).astype(int)
    assert len(set(lengths.ravel().tolist())) >= 5  # the lengths really vary


def test_lengths_are_log_uniform_and_cover_the_range():
    """P(T <= x) = log((x + 1) / T_min) / log((T_max + 1) / T_min) for T_min <= x <= T_max.
    4000 independent draws: each empirical CDF value is within 5 binomial standard
    deviations (sd <= 0.008) of it, a margin that a uniform-in-T draw (off by up to 0.3 at
    x = 50) or rounding up instead of down (about 0.01-0.02 at x = 10) does not fit."""
    low, high = 10, 200
    system = LengthProbe(high, low)
    keys = jax.random.split(jax.random.PRNGKey(1), 1000)
    lengths = np.asarray(jax.vmap(lambda k: jax.vmap(lambda e: episode_horizon(system, k, e))(jnp.arange(4)))(keys))
    lengths = lengths.ravel()
    # both ends occur: P(T = 200) = log(201/200) / log(201/10) = 0.0017, so about 7 of the
    # 4000 draws (none with probability 1e-3; the seed is fixed); an exclusive upper bound
    # (learned_optimization's) never draws it
    assert lengths.min() == low and lengths.max() == high
    for x in (10, 20, 50, 100, 150):
        cdf = np.log((x + 1) / low) / np.log((high + 1) / low)
        sd = np.sqrt(cdf * (1 - cdf) / lengths.size)
        assert abs(np.mean(lengths <= x) - cdf) < 5 * max(sd, 1e-3), (x, np.mean(lengths <= x), cdf)


@pytest.mark.parametrize("min_horizon", [None, 12, 30])
def test_a_constant_horizon_is_the_engine_without_sampling(min_horizon):
    """min_horizon null or >= horizon: exactly the fixed-length engine (no length is drawn)."""
    plain = LengthProbe(12)
    system = LengthProbe(12, min_horizon)
    assert episode_horizon(system, jax.random.PRNGKey(0), jnp.int32(0)) is None
    theta = jnp.zeros(())
    a = init_particles(plain, theta, jax.random.PRNGKey(2), 6, step_unlock=True)
    b = init_particles(system, theta, jax.random.PRNGKey(2), 6, step_unlock=True)
    thetas = jnp.zeros((6,))
    for _ in range(9):
        a, wa = unroll(plain, thetas, thetas, a, 4, paired=True)
        b, wb = unroll(system, thetas, thetas, b, 4, paired=True)
        jax.tree.map(np.testing.assert_array_equal, (a, wa), (b, wb))


@dataclasses.dataclass(frozen=True)
class DivergingProbe(LengthProbe):
    """:class:`LengthProbe` whose step diverges (NaN, or past ``loss_cap``) when its key's
    draw is below 0.12, so restarts happen mid-window, on fresh and old episodes alike."""

    loss_cap: float | None = None

    def step(self, theta, s, t, key, data):
        ok = 1000.0 * s + self.horizon
        return s, jnp.where(jax.random.uniform(key) < 0.12, jnp.nan if self.loss_cap is None else 1e9, ok)


@pytest.mark.parametrize("cap", [1e6, None], ids=["capped", "uncapped"])
def test_divergence_restarts_reinitialise_under_the_episodes_own_length(cap):
    """A restarted particle is re-initialised for the episode it is in (the old one before a
    reset inside the window, the new one after it): every healthy step's init length equals
    the length it runs under. With a cap the restart is in-step; without, after the window.
    Unchunked and ``particle_chunk = 2`` agree exactly."""
    system = DivergingProbe(12, 4, cap)

    def run(chunk):
        state = init_particles(system, jnp.zeros(()), jax.random.PRNGKey(3), 8, step_unlock=True)
        thetas = jnp.zeros((8,))
        step = jax.jit(lambda st: unroll(system, thetas, thetas, st, 3, particle_chunk=chunk, paired=True))
        losses, restarts = [], 0
        for _ in range(40):
            state, window = step(state)
            losses.append(np.asarray(window.losses))
            restarts += int(np.asarray(window.restarted).sum())
        return np.concatenate(losses, axis=1), restarts, state

    losses, restarts, state = run(None)
    healthy = np.isfinite(losses) & (losses < 1e6)
    assert restarts >= 20 and healthy.mean() > 0.7  # many restarts, and most steps to check
    at_init, running = np.floor(losses[healthy] / 1000.0), np.mod(losses[healthy], 1000.0)
    np.testing.assert_array_equal(at_init, running)
    np.testing.assert_array_equal(losses[0::2], losses[1::2])  # a pair restarts together
    chunked, _, chunked_state = run(2)
    np.testing.assert_array_equal(chunked, losses)
    jax.tree.map(np.testing.assert_array_equal, chunked_state, state)


def test_the_inner_optimizer_is_built_for_its_episodes_length():
    """InnerTraining runs an episode under ``with_horizon(T_e)``: the optimizer's
    ``num_steps`` (the learned optimizers' training-fraction features) is that episode's
    length, at its init and at every step. The probe optimizer keeps ``num_steps`` as its state."""
    import optax

    from lopt.tasks.quadratic import NoisyQuadratic
    from lopt.tasks.training import InnerTraining

    def probe_optimizer(theta, num_steps):
        def update(grads, state, params=None):
            return jax.tree.map(jnp.zeros_like, grads), jnp.asarray(num_steps, jnp.float32)

        return optax.GradientTransformation(lambda params: jnp.asarray(num_steps, jnp.float32), update)

    system = InnerTraining(NoisyQuadratic(dim=3), probe_optimizer, horizon=30, min_horizon=5)
    assert system.with_horizon(7).min_horizon is None  # one episode has one length
    state = init_particles(system, jnp.zeros(()), jax.random.PRNGKey(0), 8, step_unlock=True)
    thetas = jnp.zeros((8,))
    step = jax.jit(lambda st: unroll(system, thetas, thetas, st, 5, paired=True))
    for _ in range(12):  # 60 steps: resets inside and at the end of windows
        state, _ = step(state)
        lengths = jax.vmap(lambda k, e: episode_horizon(system, k, e))(state.key, state.episode)
        np.testing.assert_array_equal(np.asarray(state.inner.opt_state), np.asarray(lengths, np.float32))
    assert int(np.asarray(state.episode).max()) >= 2


def test_windows_must_fit_the_shortest_episode():
    system = LengthProbe(20, 4)
    state = init_particles(system, jnp.zeros(()), jax.random.PRNGKey(0), 2)
    with pytest.raises(ValueError, match="shortest episode"):
        unroll(system, jnp.zeros((2,)), jnp.zeros((2,)), state, 5)


def _raw(**meta):
    raw = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    raw["meta_train"].update(meta)
    return raw


@pytest.mark.parametrize(
    "meta,key,message",
    [
        ({"min_horizon": 30}, "min_horizon", "must be <= horizon (20)"),
        ({"min_horizon": 4}, "trunc_length", "must be <= min_horizon (4)"),
        ({"min_horizon": 10, "estimator": "full_es", "trunc_length": 20}, "min_horizon", "allowed null or horizon"),
    ],
)
def test_bad_min_horizon_names_the_key(meta, key, message):
    with pytest.raises(ConfigError) as err:
        validate_config(_raw(**meta), "smoke.yaml")
    assert f"meta_train.{key}" in str(err.value) and message in str(err.value), str(err.value)


def test_unset_min_horizon_leaves_fingerprints_and_triggers_alone():
    """Configs from before min_horizon resolve as they did (no key), so their checkpoints,
    recorded configs and Snakemake params stay current; a set one changes the fingerprint."""
    from lopt.meta_train import fingerprint

    plain = validate_config(_raw())
    assert "min_horizon" not in plain.to_dict()["meta_train"]
    same = validate_config(_raw(min_horizon=20))  # = horizon: every episode lasts 20 steps
    assert "min_horizon" not in same.to_dict()["meta_train"] and fingerprint(same) == fingerprint(plain)
    sampled = validate_config(_raw(min_horizon=5))
    assert sampled.to_dict()["meta_train"]["min_horizon"] == 5
    assert fingerprint(sampled) != fingerprint(plain)
    assert validate_config(plain.to_dict()) == plain


def test_meta_training_with_sampled_horizons(digits_root):
    """The smoke config's learned optimizer over episodes of 5-40 steps: every particle's
    step and episode counters after 60 inner steps agree with the drawn lengths, the
    learned optimizer compiles with a traced episode length, and the estimates are finite."""
    from lopt.meta_train import build_trainer, make_meta_step

    raw = _raw(min_horizon=5, horizon=40, trunc_length=5)
    raw["data"]["root"] = str(digits_root)
    trainer = build_trainer(validate_config(raw))
    step = make_meta_step(trainer)
    state = trainer.init()
    start = state.estimator_state.particles
    for _ in range(12):
        state, metrics = step(state, trainer.data)
        assert np.isfinite(float(metrics["meta_loss"])) and np.isfinite(float(metrics["grad_norm"]))
    end = state.estimator_state.particles
    for k, t0, e1, t1 in zip(np.asarray(start.key), np.asarray(start.step), np.asarray(end.episode), np.asarray(end.step)):
        e, t = 0, int(t0) + 60
        while t >= (n := _length(k, e, 5, 40)):
            e, t = e + 1, t - n
        assert (e, t) == (int(e1), int(t1))
    assert int(np.asarray(end.episode).max()) >= 2


@pytest.mark.parametrize("min_horizon,says", [(None, "T = 20,"), (20, "T = 20,"), (5, "T log-uniform in [5, 20],")])
def test_model_card_states_the_episode_lengths(tmp_path, min_horizon, says):
    from lopt.meta_train.run_dir import _write_model_card
    from lopt.optimizers.pretrained import from_config

    cfg = validate_config(_raw(min_horizon=min_horizon))
    _write_model_card(tmp_path / "card.md", from_config(cfg.lopt), cfg, 20)
    assert f"K = 5, {says} sigma" in (tmp_path / "card.md").read_text()


def test_a_resumed_run_draws_the_same_lengths(tmp_path):
    """Lengths are a function of (particle key, episode), so a run extended from its
    checkpoint equals one run straight through: same particle counters, same theta."""
    from lopt.meta_train import meta_train

    raw = _raw(task={"kind": "quadratic", "dim": 6}, min_horizon=5, outer_steps=6, checkpoint_every=3, log_every=3)
    raw["data"]["root"] = str(tmp_path / "data")
    raw["tracking"] = {"mode": "disabled"}
    cfg = validate_config(raw)
    meta_train(cfg, tmp_path / "out", progress=False)
    longer = cfg.model_copy(update={"meta_train": cfg.meta_train.model_copy(update={"outer_steps": 12})})
    resumed = meta_train(longer, tmp_path / "out", resume=True, progress=False)
    straight = meta_train(longer, tmp_path / "straight", progress=False)
    jax.tree.map(np.testing.assert_array_equal, resumed.estimator_state.particles.episode,
                 straight.estimator_state.particles.episode)
    assert int(np.asarray(straight.estimator_state.particles.episode).max()) >= 2  # resets happened
    for a, b in zip(jax.tree.leaves(resumed.theta), jax.tree.leaves(straight.theta)):
        np.testing.assert_array_equal(a, b)
