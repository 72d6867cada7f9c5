"""The vectorised truncated-unroll engine shared by every estimator.

An *unrolled system* is anything with a state advanced step by step under
meta-parameters ``theta`` and a per-step loss: inner training of a network by a
learned optimizer, a Lorenz simulation, influence balancing. It provides

    horizon: int                                    episode length T
    init(theta, key, data) -> inner                 a fresh episode's state
    step(theta, inner, t, key, data) -> (inner, loss)   one step at inner step t

and optionally ``loss_cap`` (see Divergence below) and, for episodes of random length,
``min_horizon`` with ``with_horizon(T) -> system`` (see Sampled horizons below).

The engine keeps ``P`` particles, each with its own inner state, inner step ``t``,
episode counter and PRNG key (:class:`ParticleState`, every leaf with leading axis
``P``), and advances all of them ``K`` steps with ``lax.scan`` over a ``vmap``ed
step, inside whatever ``jit`` the caller uses. When a particle reaches ``t = T`` its
episode ends and it is re-initialised in the same scan iteration (a *reset*).

Antithetic layout: with ``antithetic=True`` particles ``2m`` (the + copy) and ``2m + 1``
(the - copy) form pair ``m`` (:func:`pair_up`, :func:`unpair`). They share the PRNG key
and the start offset, so the + and - copies see the same data and the same
initialisations and reset on the same step; only ``theta`` differs. Estimators rely on
this when they difference the pair's losses. Adjacent copies keep a pair on one device
when the particle axis is split over devices (:mod:`lopt.sharding`): pair-axis arrays
(the noise) and particle-axis arrays then split alike, and differencing a pair needs no
communication. (Before, particle ``i`` was paired with ``i + P/2``; GSPMD then moved
data between devices for every pairing, and compiled such programs 3x slower.)

Randomness is a pure function of (particle key, episode, step): the key of inner step
``t`` of episode ``e`` is ``fold_in(split(fold_in(k, e))[1], t)`` and the init key is
``split(fold_in(k, e))[0]``. Nothing PRNG-related is carried, so a resumed run draws
exactly the same numbers.

Step-unlocking: with ``step_unlock=True`` each pair starts its first episode at a
random inner step in ``[0, T)`` (``[0, T_0)`` with sampled lengths; from fresh parameters,
as learned_optimization does), so windows are staggered over the horizon and the
meta-gradient averages over all phases of training instead of all particles sitting at the
same phase.

Resets inside a window: a window of ``K <= T`` steps contains at most one reset per
particle (the shortened first episode has at least one step). Windows in which no
particle starts a new episode before the window's last step (every window when the
particles run in lockstep and ``K`` divides ``T``; most windows when ``K << T``) take a
fast path chosen by one ``lax.cond`` per window: ``theta_a`` and the episode's key for
every step, no per-step selects; bit-identical to the general path. :func:`unroll` takes
two meta-parameter sets, ``theta_a`` for the steps of the episode current at the
window start and ``theta_b`` for steps after a reset, and reports per step whether it
was "fresh" (after a reset). PES passes the same perturbed theta twice; NRES passes
the old and a newly drawn perturbation; everything else follows from that mask.

Sampled horizons: a system whose ``min_horizon`` is below its ``horizon`` gets episodes of
random length, like learned_optimization's ``LogUniformLengthSchedule`` (which excludes
``T_max``; here it is included): episode ``e`` of a particle lasts
``T_e = floor(exp(U(log T_min, log(T_max + 1))))`` steps (clipped to ``[T_min, T_max]``,
``T_max = horizon``), drawn from ``fold_in(fold_in(k, e), _HORIZON)``, so again nothing is
carried, a resumed run draws the same lengths, and the + and - copies of a pair share them. The engine runs that episode's init and steps under
``system.with_horizon(T_e)`` (a traced per-particle ``T_e``): an inner optimizer whose
features include the fraction of training done sees the episode's own length. Windows must
fit the shortest episode (``K <= T_min``), so a window still holds at most one reset. With a
constant horizon (no ``min_horizon``, or ``min_horizon >= horizon``) none of this is traced.
Since ``p(T) ~ 1/T``, the share of inner steps (and windows, and meta-gradient weight) that
episodes of length ``T`` supply is ``~ T p(T)``: uniform over ``[T_min, T_max]``. For
``[200, 1000]`` the mean episode lasts about 500 steps, but the mean step sits in an episode of
600 (the first episodes' start offsets, uniform in ``[0, T_0)``, are not weighted so).

Divergence, with a ``loss_cap`` (the system's optional divergence threshold): a step whose
loss is non-finite or at/above it restarts that particle's inner run from ``system.init`` (a
key derived from the step key; same inner step and episode), reports the cap as its loss,
and is flagged in ``Window.diverged``; inside jit, under a ``lax.cond`` taken only when some
particle diverged, so the window's estimate stays finite. With ``paired=True`` (the ES
estimators' antithetic pairs) the other copy of the pair restarts too, from the same init key:
restarting one copy alone would leave the pair's states apart, so its loss differences stay
of order one instead of sigma for the rest of the episode. ``Window.restarted`` marks the
restart: the restarted state no longer depends on earlier perturbations, so PES and GPES
weight the steps after it by the perturbation they run under alone and restart their
accumulated noise, as after an episode reset. A capped step's loss difference
is still up to the cap (against differences of order sigma elsewhere) and can dominate that
window's ES estimate; an estimator's ``loss_diff_clip`` bounds it. Without a cap nothing is
checked per step (systems like Lorenz, whose state is bounded, pay nothing); a non-finite
loss makes that window's estimate non-finite (meta-training skips such an update), every
non-finite step is flagged, and a particle whose window *ends* non-finite is restarted
after the window (one ``lax.cond`` per window), so it does not stay NaN until its episode
ends.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

Theta = Any
Inner = Any


class UnrolledSystem(Protocol):
    """A state-transition system with a per-step loss (see the module docstring)."""

    horizon: int

    def init(self, theta: Theta, key: jax.Array, data: Any) -> Inner: ...

    def step(
        self, theta: Theta, inner: Inner, t: jax.Array, key: jax.Array, data: Any
    ) -> tuple[Inner, jax.Array]: ...


def loss_cap(system: UnrolledSystem) -> float | None:
    """The system's optional ``loss_cap`` (divergence threshold; see :func:`unroll`)."""
    return getattr(system, "loss_cap", None)


def horizon_range(system: UnrolledSystem) -> tuple[int, int] | None:
    """``(T_min, T_max)`` when the system's episodes have random lengths, else None."""
    low = getattr(system, "min_horizon", None)
    if low is None or low >= system.horizon:
        return None
    if not hasattr(system, "with_horizon"):
        raise TypeError(f"{type(system).__name__} sets min_horizon but has no with_horizon(T) for its episodes")
    return int(low), int(system.horizon)


# fold_in tag of the key an episode's sampled length is drawn from
_HORIZON = 0x40121


def episode_horizon(system: UnrolledSystem, key: jax.Array, episode: jax.Array) -> jax.Array | None:
    """``T_e`` of episode ``episode`` of the particle with raw key ``key`` (int32 scalar), or
    None with a constant horizon (see the module docstring's Sampled horizons)."""
    bounds = horizon_range(system)
    if bounds is None:
        return None
    low, high = bounds
    u = jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, episode), _HORIZON))
    log_t = jnp.log(float(low)) + u * (jnp.log(float(high + 1)) - jnp.log(float(low)))
    return jnp.clip(jnp.floor(jnp.exp(log_t)).astype(jnp.int32), low, high)


def _episode_horizons(system: UnrolledSystem, keys: jax.Array, episodes: jax.Array) -> jax.Array | None:
    """:func:`episode_horizon` per particle (``[P]``), or None with a constant horizon."""
    if horizon_range(system) is None:
        return None
    return jax.vmap(lambda k, e: episode_horizon(system, k, e))(keys, episodes)


def _at(system: UnrolledSystem, horizon: jax.Array | None) -> UnrolledSystem:
    """The system of an episode of ``horizon`` steps (itself when the horizon is constant)."""
    return system if horizon is None else system.with_horizon(horizon)


def _init_each(system: UnrolledSystem, theta: Theta, keys: jax.Array, lengths: jax.Array | None, data: Any) -> Inner:
    """``system.init`` per particle (leading axis ``P`` on ``theta``, ``keys``, ``lengths``),
    each for its episode's length (``lengths`` None: the constant horizon)."""
    return jax.vmap(lambda th, k, n: _at(system, n).init(th, k, data))(theta, keys, lengths)


class ParticleState(NamedTuple):
    """State of ``P`` particles; every leaf has leading axis ``P``."""

    inner: Inner
    step: jax.Array  # int32[P], inner step within the current episode
    episode: jax.Array  # int32[P], episodes started so far (0-based)
    key: jax.Array  # uint32[P, 2], raw per-particle key (shared within a pair)


class Window(NamedTuple):
    """What one window of ``K`` steps produced, per particle and step."""

    losses: jax.Array  # float32[P, K]
    fresh: jax.Array  # bool[P, K], step ran in an episode begun inside this window
    done: jax.Array  # bool[P], an episode ended (and a reset happened) in this window
    diverged: jax.Array  # bool[P, K], the step's loss was non-finite or >= loss_cap
    # bool[P, K]: the particle's state was re-initialised after this step by a divergence
    # restart (both copies of a pair when paired; uncapped systems: after the window, marked
    # on its last step), so the steps after it depend on no perturbation before it
    restarted: jax.Array


def tree_select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """``jnp.where`` over pytrees with a scalar (per-particle) predicate."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def pair_up(plus: jax.Array, minus: jax.Array) -> jax.Array:
    """``[M, ...]`` and ``[M, ...]`` -> ``[2M, ...]`` in the antithetic layout: row ``2m``
    is ``plus[m]``, row ``2m + 1`` is ``minus[m]`` (see the module docstring)."""
    return jnp.stack([plus, minus], axis=1).reshape(2 * plus.shape[0], *plus.shape[1:])


def unpair(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The inverse of :func:`pair_up`: ``[2M, ...]`` -> ``(plus [M, ...], minus [M, ...])``."""
    pairs = x.reshape(x.shape[0] // 2, 2, *x.shape[1:])
    return pairs[:, 0], pairs[:, 1]


def broadcast_theta(theta: Theta, num: int) -> Theta:
    """Stack ``num`` copies of ``theta`` along a new leading axis."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num, *x.shape)), theta)


# fold_in tag of the key that re-initialises a diverged particle (derived from the step key)
_RESTART = 0x5E5E7


def _episode_keys(key: jax.Array, episode: jax.Array) -> tuple[jax.Array, jax.Array]:
    init_key, step_key = jax.random.split(jax.random.fold_in(key, episode))
    return init_key, step_key


def init_particles(
    system: UnrolledSystem,
    theta: Theta,
    key: jax.Array,
    num_particles: int,
    data: Any = None,
    *,
    step_unlock: bool = False,
    antithetic: bool = True,
) -> ParticleState:
    """Fresh particles at episode 0.

    Args:
        system: the unrolled system.
        theta: unperturbed meta-parameters (used only by ``system.init``).
        key: PRNG key; particle keys and start offsets derive from it.
        num_particles: ``P``; even when ``antithetic``.
        data: passed through to the system.
        step_unlock: start each pair at a random inner step in ``[0, T)`` (of its first
            episode: ``[0, T_0)`` with sampled lengths).
        antithetic: pair particle ``2m`` with ``2m + 1`` (shared key and offset).
    """
    if antithetic and num_particles % 2:
        raise ValueError(f"antithetic particles need an even count, got {num_particles}")
    num_groups = num_particles // 2 if antithetic else num_particles
    key_particles, key_offsets = jax.random.split(key)
    keys = jax.random.split(key_particles, num_groups)
    first = _episode_horizons(system, keys, jnp.zeros((num_groups,), jnp.int32))  # None: constant
    if step_unlock:  # a start within the first episode, whatever its length
        offsets = jax.random.randint(key_offsets, (num_groups,), 0, system.horizon if first is None else first)
    else:
        offsets = jnp.zeros((num_groups,), jnp.int32)
    if antithetic:
        keys = pair_up(keys, keys)
        offsets = pair_up(offsets, offsets)
        first = None if first is None else pair_up(first, first)
    episode = jnp.zeros((num_particles,), jnp.int32)
    init_keys = jax.vmap(lambda k, e: _episode_keys(k, e)[0])(keys, episode)
    inner = jax.vmap(lambda k, h: _at(system, h).init(theta, k, data))(init_keys, first)
    return ParticleState(inner, offsets.astype(jnp.int32), episode, keys)


def unroll(
    system: UnrolledSystem,
    theta_a: Theta,
    theta_b: Theta,
    state: ParticleState,
    num_steps: int,
    data: Any = None,
    *,
    particle_chunk: int | None = None,
    paired: bool = False,
) -> tuple[ParticleState, Window]:
    """Advance every particle ``num_steps`` (K) steps, resetting at the horizon.

    Args:
        theta_a: per-particle meta-parameters (leading axis ``P``) for steps of the
            episode that is current at the window start.
        theta_b: per-particle meta-parameters for steps after a reset in this window,
            also used to initialise the new episode.
        state: the particles.
        num_steps: K, static.
        particle_chunk: unroll the particles ``c`` at a time (``lax.map`` over ``P / c``
            chunks of consecutive particles, each a whole window); None: all at once.
            Particles are independent within a window, so the result is the same; what
            changes is the working set, which for large ``P`` on a CPU can then stay in
            cache (see benchmarks/RESULTS.md). ``c`` must divide ``P``; when
            ``paired`` an odd ``c`` is doubled, so no chunk splits a pair.
        paired: the particles are antithetic pairs (:func:`pair_up` layout, shared key):
            a divergence restart restarts both copies of the pair (see the module
            docstring), so the pair stays antithetic.

    Returns:
        The new state and the :class:`Window` (losses and masks, shape ``[P, K]``).
    """
    num_particles = state.step.shape[0]
    if paired and particle_chunk is not None and particle_chunk % 2:
        particle_chunk *= 2  # whole pairs: a divergence restart reads both copies
    if particle_chunk is not None and particle_chunk < num_particles:
        if num_particles % particle_chunk:
            raise ValueError(f"particle_chunk ({particle_chunk}) must divide the {num_particles} particles")
        chunks = num_particles // particle_chunk

        def split(x):
            return x.reshape(chunks, particle_chunk, *x.shape[1:])

        def one_chunk(args):
            ta, tb, st = args
            return unroll(system, ta, tb, st, num_steps, data, paired=paired)

        new, window = jax.lax.map(one_chunk, jax.tree.map(split, (theta_a, theta_b, state)))
        return jax.tree.map(lambda x: x.reshape(num_particles, *x.shape[2:]), (new, window))
    bounds = horizon_range(system)
    if num_steps > (shortest := system.horizon if bounds is None else bounds[0]):
        # the reset state below covers one reset per window
        what = "the horizon" if bounds is None else "the shortest episode (min_horizon)"
        raise ValueError(f"a window of {num_steps} steps is longer than {what} ({shortest})")
    # Per-particle lengths of the current episode (a) and the next (b), or None: then
    # `horizon` is the constant T and every _at(system, None) below is the system itself.
    len_a = _episode_horizons(system, state.key, state.episode)
    len_b = _episode_horizons(system, state.key, state.episode + 1)
    horizon = system.horizon if len_a is None else len_a

    # A window of K <= T steps holds at most one reset per particle, so the state a reset
    # installs -- episode + 1 initialised under theta_b -- is known at the window start.
    # Building it once here instead of inside the step saves K - 1 initialisations per
    # particle (under vmap a per-step init runs on every step, reset or not).
    def next_episode(tb, episode, key, length):
        return _at(system, length).init(tb, _episode_keys(key, episode + 1)[0], data)

    # Skip even that when no particle reaches the horizon in this window (a real branch:
    # the predicate is one scalar for the whole batch), e.g. most windows when K << T.
    reset_inner = jax.lax.cond(
        jnp.any(state.step + num_steps >= horizon),
        lambda: jax.vmap(next_episode)(theta_b, state.episode, state.key, len_b),
        lambda: state.inner,
    )

    def vstep(theta, inner, t, keys, length):
        # system.step per particle, each under its episode's length when lengths are sampled
        return jax.vmap(lambda th, x, tt, k, n: _at(system, n).step(th, x, tt, k, data))(theta, inner, t, keys, length)

    cap = loss_cap(system)

    def restart_diverged(inner, loss, theta_now, keys, length):
        # Divergence (a non-finite loss, or one at/above the cap) restarts that particle's
        # inner run from fresh state mid-episode (same inner step and episode) and, with a
        # cap, reports the cap as its loss, so one blow-up neither crashes meta-training nor
        # leaves the particle NaN for the rest of its episode. A real branch: the
        # re-initialisation only runs in steps where some particle diverged.
        if cap is None:  # checked once per window instead (see _restart_nonfinite); no
            return inner, loss, ()  # per-step marks either: outputs cost time on tiny systems
        bad = ~jnp.isfinite(loss) | (loss >= cap)
        again = _pair_any(bad) if paired else bad  # both copies: the pair stays antithetic

        def restart():
            # the copies of a pair share their step key, so both restart from the same init key
            restart_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, _RESTART)
            fresh_inner = _init_each(system, theta_now(), restart_keys, length, data)
            return jax.vmap(tree_select)(again, fresh_inner, inner)

        inner = jax.lax.cond(jnp.any(bad), restart, lambda: inner)
        return inner, jnp.where(bad, cap, loss), (bad, again)

    def window_marks(marks, losses):
        # (diverged, restarted) [P, K] from the scan's [K, P] marks; all False without a cap
        if not marks:
            return jnp.zeros(losses.T.shape, bool), jnp.zeros(losses.T.shape, bool)
        return marks[0].T, marks[1].T

    # Per-window key material: steps of episode e use fold_in(step_key_e, t), steps after
    # the reset fold_in(step_key_{e+1}, t); deriving both here leaves one fold_in per step.
    step_key_a = jax.vmap(lambda k, e: _episode_keys(k, e)[1])(state.key, state.episode)

    def finish(st, inner, t):
        # A reset on the window's last step: install the new episode after the scan.
        done = t >= horizon
        inner = jax.vmap(tree_select)(done, reset_inner, inner)
        episode = st.episode + done.astype(jnp.int32)
        return ParticleState(inner, jnp.where(done, 0, t), episode, st.key), done

    def no_reset_inside(st):
        # Fast path: no particle starts a new episode before the window's last step
        # (every window in lockstep when K divides T, and most windows when K << T), so
        # every step runs theta_a from episode e with no per-step selects.
        def body(inner, j):
            t = st.step + j
            keys = jax.vmap(jax.random.fold_in)(step_key_a, t)
            inner, loss = vstep(theta_a, inner, t, keys, len_a)
            inner, loss, marks = restart_diverged(inner, loss, lambda: theta_a, keys, len_a)
            return inner, (loss, marks)

        inner, (losses, marks) = jax.lax.scan(
            body, st.inner, jnp.arange(num_steps, dtype=jnp.int32)
        )
        new, done = finish(st, inner, st.step + num_steps)
        return new, Window(losses.T, jnp.zeros_like(losses.T, bool), done, *window_marks(marks, losses))

    def reset_inside(st):
        step_key_b = jax.vmap(lambda k, e: _episode_keys(k, e + 1)[1])(st.key, st.episode)

        def particle_step(ta, tb, inner, t, key_a, key_b, fresh, length):
            theta = tree_select(fresh, tb, ta)
            key = jax.random.fold_in(jnp.where(fresh, key_b, key_a), t)
            inner, loss = _at(system, length).step(theta, inner, t, key, data)
            return inner, loss, key

        vstep_mixed = jax.vmap(particle_step)

        def body(carry, _):
            inner, t, fresh = carry
            length = None if len_a is None else jnp.where(fresh, len_b, len_a)
            inner, loss, keys = vstep_mixed(theta_a, theta_b, inner, t, step_key_a, step_key_b, fresh, length)
            inner, loss, marks = restart_diverged(
                inner, loss, lambda: jax.vmap(tree_select)(fresh, theta_b, theta_a), keys, length
            )
            t = t + 1
            done = t >= (horizon if length is None else length)
            inner = jax.vmap(tree_select)(done, reset_inner, inner)
            return (inner, jnp.where(done, 0, t), fresh | done), (loss, fresh, marks)

        fresh0 = jnp.zeros(st.step.shape, bool)
        (inner, t, done), (losses, fresh, marks) = jax.lax.scan(
            body, (st.inner, st.step, fresh0), None, length=num_steps
        )
        new = ParticleState(inner, t, st.episode + done.astype(jnp.int32), st.key)
        return new, Window(losses.T, fresh.T, done, *window_marks(marks, losses))

    new, window = jax.lax.cond(
        jnp.all(state.step + num_steps <= horizon), no_reset_inside, reset_inside, state
    )
    if cap is None:
        new, window = _restart_nonfinite(system, theta_a, theta_b, new, window, data, paired, len_a, len_b)
    return new, window


def _pair_any(mask: jax.Array) -> jax.Array:
    """``mask [P]`` -> ``[P]``: true for both copies of a pair where either copy is."""
    plus, minus = unpair(mask)
    either = plus | minus
    return pair_up(either, either)


def _restart_nonfinite(
    system: UnrolledSystem, theta_a: Theta, theta_b: Theta, state: ParticleState, window: Window, data: Any,
    paired: bool = False, len_a: jax.Array | None = None, len_b: jax.Array | None = None,
) -> tuple[ParticleState, Window]:
    """Uncapped systems: flag non-finite steps; restart particles whose window ended non-finite.

    ``len_a`` / ``len_b``: the window's episode lengths (see :func:`unroll`), or None.

    The restart (same inner step and episode, fresh ``system.init`` under the theta of the
    window's last step, key from the particle's key, episode, step) skips particles whose
    episode ended on the window's last step: the engine already installed a fresh episode.
    """
    bad = ~jnp.isfinite(window.losses)
    last_fresh = window.fresh[:, -1]
    # after a reset on the last step the old episode's loss is last, the new state is fresh
    need = bad[:, -1] & (last_fresh | ~window.done)
    if paired:  # the masks of a pair's copies agree, so both copies qualify alike
        need = _pair_any(need)

    def restart():
        keys = jax.vmap(
            lambda k, e, t: jax.random.fold_in(jax.random.fold_in(_episode_keys(k, e)[1], t), _RESTART)
        )(state.key, state.episode, state.step)
        theta = jax.vmap(tree_select)(last_fresh, theta_b, theta_a)
        length = None if len_a is None else jnp.where(last_fresh, len_b, len_a)
        fresh_inner = _init_each(system, theta, keys, length, data)
        return jax.vmap(tree_select)(need, fresh_inner, state.inner)

    inner = jax.lax.cond(jnp.any(need), restart, lambda: state.inner)
    restarted = window.restarted.at[:, -1].set(need)
    return state._replace(inner=inner), window._replace(diverged=bad, restarted=restarted)
