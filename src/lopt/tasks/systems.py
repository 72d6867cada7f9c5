"""Small unrolled systems from the PES and NRES papers, for the truncated-unroll engine.

Each class implements :class:`lopt.unroll.UnrolledSystem` exactly::

    horizon: int
    init(theta, key, data) -> inner
    step(theta, inner, t, key, data) -> (inner, loss)

They are frozen (hashable) dataclasses, pure and free of Python side effects, so
``init`` and ``step`` can be ``jit``-ed and ``vmap``-ed over particles; ``theta`` is a
flat ``jnp`` array and ``data`` is ignored (pass ``None``). Every per-step loss is
measured on the state *after* that step's update, as in the authors' code.

* :class:`InfluenceBalancing` -- the linear system of Tallec & Ollivier (UORO) as used
  by PES (Vicol et al., 2021), where short-truncation TBPTT has the wrong sign.
* :class:`ToySchedule` -- PES's 2-D learning-rate-schedule meta-objective.
* :class:`Lorenz` -- NRES's (Li et al., 2023) Lorenz-63 parameter-learning problem.

References: P. Vicol, L. Metz, J. Sohl-Dickstein, "Unbiased Gradient Estimation in
Unrolled Computation Graphs with Persistent Evolution Strategies", ICML 2021;
O. Li, J. Harrison, J. Sohl-Dickstein, V. Smith, L. Metz, "Variance-Reduced Gradient
Estimation via Noise-Reuse in Online Evolution Strategies", NeurIPS 2023.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["InfluenceBalancing", "Lorenz", "ToySchedule"]


def _float(x: Any) -> jax.Array:
    """``x`` as an array of JAX's default float dtype (float32 unless x64 is on)."""
    return jnp.asarray(x, dtype=float)


# --------------------------------------------------------------------------------------
# 1. Influence balancing (PES section 5.1)
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InfluenceBalancing:
    """Influence balancing: a linear system whose short-horizon gradient has the wrong sign.

    State ``s in R^n`` (``n = dim``), scalar meta-parameter ``theta`` (shape ``(1,)``)::

        A       = 0.5 I + 0.5 U          (U: ones on the superdiagonal, n x n)
        b       = [+1] * num_positive + [-1] * (n - num_positive)
        s_0     = (1, ..., 1)
        s_{t+1} = A s_t + theta * b
        loss_t  = 0.5 * (s_{t+1}[0] - 1)^2          (measured after the update)

    ``A`` is upper bidiagonal with spectral radius 0.5, so the dynamics are stable and
    converge to the fixed point ``s* = theta (I - A)^{-1} b`` whose first component is
    ``s*[0] = 2 theta sum(b) = 2 theta (2 num_positive - n)``, i.e. ``-6 theta`` for the
    paper's ``n = 23, num_positive = 10``; the long-run loss is minimised at
    ``theta* = -1/6``. Component 0 is influenced by component ``j`` only after ``j``
    steps, so the ``k``-step sensitivity ``d s_k[0] / d theta`` (see
    :meth:`k_step_sensitivity`) is ``+k`` for ``k <= num_positive`` (only the positive
    entries of ``b`` have reached ``s[0]``) and tends to ``-6`` for long ``k``: TBPTT
    with ``K <= 10`` pushes ``theta`` the wrong way, while PES is unbiased.

    Paper settings (PES ``influence_balancing.py``): ``n = 23``, ``num_positive = 10``,
    ``theta_0 = 0.5``, the state is **never reset** (use a horizon far beyond any run
    length in configs, e.g. ``10**9``); ES/PES with ``K = 1``, ``N = 1000`` particles,
    ``sigma = 0.1``, SGD lr ``1e-4`` for 3000 iterations; TBPTT with
    ``K in {1, 10, 100}``. The evaluation metric is the loss after 500 steps from
    ``s_0`` (:meth:`unroll_loss`).

    The inner state is the vector ``s`` (shape ``(dim,)``); ``t``, ``key`` and ``data``
    are unused.
    """

    horizon: int
    dim: int = 23
    num_positive: int = 10

    def initial_theta(self) -> jax.Array:
        """The paper's starting point, ``theta_0 = (0.5,)``."""
        return _float([0.5])

    @property
    def signs(self) -> jax.Array:
        """``b``: ``num_positive`` ones followed by ``dim - num_positive`` minus ones."""
        return _float([1.0] * self.num_positive + [-1.0] * (self.dim - self.num_positive))

    @property
    def matrix(self) -> jax.Array:
        """``A = 0.5 I + 0.5 U`` as a dense matrix (the step applies it without one)."""
        return 0.5 * jnp.eye(self.dim) + 0.5 * jnp.eye(self.dim, k=1)

    def _transition(self, theta: jax.Array, s: jax.Array) -> jax.Array:
        shifted = jnp.concatenate([s[1:], jnp.zeros((1,), s.dtype)])  # (U s)_i = s_{i+1}
        return 0.5 * s + 0.5 * shifted + jnp.reshape(theta, ()) * self.signs

    def init(self, theta: jax.Array, key: jax.Array, data: Any) -> jax.Array:
        del theta, key, data
        return jnp.ones((self.dim,), dtype=_float(0.0).dtype)

    def step(
        self, theta: jax.Array, inner: jax.Array, t: jax.Array, key: jax.Array, data: Any
    ) -> tuple[jax.Array, jax.Array]:
        del t, key, data
        s = self._transition(theta, inner)
        return s, 0.5 * (s[0] - 1.0) ** 2

    def fixed_point(self, theta: jax.Array) -> jax.Array:
        """``s*`` solving ``(I - A) s = theta b`` (the long-run state under ``theta``)."""
        lhs = jnp.eye(self.dim) - self.matrix
        return jnp.linalg.solve(lhs, jnp.reshape(theta, ()) * self.signs)

    def k_step_sensitivity(self, k: int) -> float:
        """``d s_k[0] / d theta`` after ``k`` steps with the initial state held fixed.

        Computed by autodiff through ``k`` steps from ``s_0``. The dynamics are linear,
        so the value does not depend on ``theta`` or ``s_0``; it is
        ``sum_{j<k} (A^j b)[0]``: ``+1`` for ``k = 1``, ``+10`` for ``k = 10`` and
        about ``-6`` for ``k = 100`` with the paper's settings.
        """

        return float(self.k_step_sensitivities(k)[-1])

    def k_step_sensitivities(self, num_steps: int) -> np.ndarray:
        """:meth:`k_step_sensitivity` for ``k = 1 .. num_steps`` at once, shape ``(num_steps,)``.

        One forward-mode pass through one scan, so the whole profile costs one compile.
        """

        def first_coordinates(theta):
            def body(s, _):
                s = self._transition(theta, s)
                return s, s[0]

            return jax.lax.scan(body, self.init(theta, None, None), None, length=num_steps)[1]

        return np.asarray(jax.jacfwd(first_coordinates)(_float(0.0)))

    def unroll_loss(self, theta: jax.Array, num_steps: int = 500) -> jax.Array:
        """The per-step loss after ``num_steps`` steps from ``s_0`` (the paper's metric)."""

        def body(s, _):
            return self._transition(theta, s), None

        s, _ = jax.lax.scan(body, self.init(theta, None, None), None, length=num_steps)
        return 0.5 * (s[0] - 1.0) ** 2


# --------------------------------------------------------------------------------------
# 2. Toy 2-D learning-rate schedule (PES section 5.2)
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ToySchedule:
    """PES's toy meta-objective: tune a linear learning-rate schedule for a 2-D problem.

    Inner problem and inner optimiser, with ``T = horizon`` and ``theta in R^2``::

        f(x)    = sqrt(x0^2 + 5) - sqrt(5) + sin(x1)^2 exp(-5 x0^2) + 0.25 |x1 - 100|
        x_0     = (1, 1)
        lr_t    = exp(theta0) (T - t) / T + exp(theta1) t / T     (t = 0, ..., T - 1)
        x_{t+1} = x_t - lr_t grad f(x_t)                           (plain SGD)
        loss_t  = f(x_{t+1})                          (measured after the update)

    ``t`` is the inner step the engine passes (0 at an episode's first step), so the
    learning rate moves linearly from ``exp(theta0)`` at ``t = 0`` towards
    ``exp(theta1)`` (reached at ``t = T``, one step past the last update).

    Paper settings (PES ``toy_regression.py``): ``T = 100``, ``K = 10``, ``N = 100``
    particles, ``sigma = 0.3`` (PES) / ``1.0`` (ES), ``theta_0 = (-4, -4)``, outer Adam
    lr ``1e-2`` with ``beta1 = 0.99``; the inner SGD's weight decay of ``1e-10`` is
    dropped here. The paper's objective is the **sum** of the ``T`` per-step losses;
    :meth:`meta_loss` returns their **mean** (multiply by ``horizon`` for the sum;
    at ``theta_0`` the mean is about 24.88 against ``f(x_0) = 24.97``).

    The inner state is ``x`` (shape ``(2,)``); ``key`` and ``data`` are unused. Values
    stay finite while ``exp(theta)`` is moderate (both ``theta`` entries below about 30).
    """

    horizon: int = 100

    def initial_theta(self) -> jax.Array:
        """The paper's starting point, ``theta_0 = (-4, -4)``."""
        return _float([-4.0, -4.0])

    @staticmethod
    def inner_loss(x: jax.Array) -> jax.Array:
        """``f(x)``."""
        return (
            jnp.sqrt(x[0] ** 2 + 5.0)
            - jnp.sqrt(5.0)
            + jnp.sin(x[1]) ** 2 * jnp.exp(-5.0 * x[0] ** 2)
            + 0.25 * jnp.abs(x[1] - 100.0)
        )

    def learning_rate(self, theta: jax.Array, t: jax.Array) -> jax.Array:
        """``lr_t`` for inner step ``t``."""
        frac = jnp.asarray(t, dtype=theta.dtype) / self.horizon
        return jnp.exp(theta[0]) * (1.0 - frac) + jnp.exp(theta[1]) * frac

    def init(self, theta: jax.Array, key: jax.Array, data: Any) -> jax.Array:
        del theta, key, data
        return _float([1.0, 1.0])

    def step(
        self, theta: jax.Array, inner: jax.Array, t: jax.Array, key: jax.Array, data: Any
    ) -> tuple[jax.Array, jax.Array]:
        del key, data
        x = inner - self.learning_rate(theta, t) * jax.grad(self.inner_loss)(inner)
        return x, self.inner_loss(x)

    def meta_loss(self, theta: jax.Array) -> jax.Array:
        """Mean per-step loss over one full episode from ``x_0`` (``lax.scan``)."""

        def body(x, t):
            return self.step(theta, x, t, None, None)

        _, losses = jax.lax.scan(body, self.init(theta, None, None), jnp.arange(self.horizon))
        return jnp.mean(losses)


# --------------------------------------------------------------------------------------
# 3. Lorenz-63 parameter learning (NRES section 6)
# --------------------------------------------------------------------------------------

# exp() argument bound for the Lorenz log-parameters; see the Lorenz docstring.
_LORENZ_MAX_LOG_PARAM = 20.0


@dataclasses.dataclass(frozen=True)
class Lorenz:
    """Learn the Lorenz-63 parameters ``(a, r) = exp(theta)`` from a target trajectory.

    Forward-Euler integration with step ``dt`` of::

        dx/dt = a (y - x)
        dy/dt = x (r - z) - y
        dz/dt = x y - b z

    with ``b`` fixed, for a learned trajectory under ``(a, r) = exp(theta)``
    (``theta = (log a, log r)``, shape ``(2,)``) and a target trajectory under
    ``exp(true_log_params)``, both from the same start. Per-step loss, measured after
    the update::

        loss_t = (z_{t+1} - z^true_{t+1})^2

    **State.** The inner state is a ``(2, 3)`` array: row 0 the learned ``(x, y, z)``,
    row 1 the target. Both rows are advanced by one vectorised Euler step with
    parameters ``exp([theta, true_log_params])``, so no precomputed data is needed,
    resets and step-unlocking work unchanged, and at ``theta == true_log_params`` the
    two rows are bit-identical and the loss is exactly 0. ``t`` and ``data`` are unused.

    **Start.** ``start`` plus, when ``start_noise > 0``, ``start_noise * N(0, I_3)``
    drawn from the init key (shared by both rows, as in the NRES code); the paper
    trains with the fixed start and tests with ``start_noise = 1``.

    **Overflow guard.** Euler is unstable for large ``a dt`` and the system is
    chaotic, so an unlucky ``theta`` would overflow to inf/NaN and poison an ES
    estimate. Two clips make every loss finite, at most ``(2 state_bound)^2``:
    ``theta`` is clipped to ``[-20, 20]`` before ``exp`` and, after every step, each
    state coordinate to ``[-state_bound, state_bound]``. Neither is active on the
    paper's trajectories (the attractor stays within ``|.| < 100`` for ``r`` near 28-40),
    so there the dynamics are exactly the paper's; where a clip is active its
    derivative is 0.

    Paper settings (NRES): ``dt = 0.005``, ``T = 2000``, ``b = 8/3``; truth ``a = 10``,
    ``r = 28``; ``theta_0 = (3.116, 3.7)``; train start ``(1.2, 1.3, 1.6)``;
    ``N = 200`` antithetic pairs, ``W = K = 100``, ``sigma = 0.04``; SGD lr ``1e-5``
    (NRES, PES), ``3e-4`` (TES, TBPTT), ``3e-5`` (FullES, ``N = 10``). The metric is the
    unperturbed test loss (:meth:`meta_loss` with ``start_noise = 1``).
    """

    horizon: int = 2000
    dt: float = 0.005
    b: float = 8.0 / 3.0
    true_log_params: tuple[float, float] = (math.log(10.0), math.log(28.0))
    start: tuple[float, float, float] = (1.2, 1.3, 1.6)
    start_noise: float = 0.0
    state_bound: float = 1e3

    def initial_theta(self) -> jax.Array:
        """The paper's starting point, ``theta_0 = (3.116, 3.7)``."""
        return _float([3.116, 3.7])

    def true_theta(self) -> jax.Array:
        """``true_log_params`` as an array (the minimiser, loss exactly 0)."""
        return _float(self.true_log_params)

    def init(self, theta: jax.Array, key: jax.Array, data: Any) -> jax.Array:
        del theta, data
        start = _float(self.start)
        if self.start_noise > 0:
            start = start + self.start_noise * jax.random.normal(key, (3,), start.dtype)
        return jnp.stack([start, start])

    def step(
        self, theta: jax.Array, inner: jax.Array, t: jax.Array, key: jax.Array, data: Any
    ) -> tuple[jax.Array, jax.Array]:
        del t, key, data
        log_params = jnp.stack([jnp.asarray(theta, inner.dtype), self.true_theta()])
        log_params = jnp.clip(log_params, -_LORENZ_MAX_LOG_PARAM, _LORENZ_MAX_LOG_PARAM)
        params = jnp.exp(log_params)  # [2, 2]: rows (learned, true), columns (a, r)
        a, r = params[:, 0], params[:, 1]
        x, y, z = inner[:, 0], inner[:, 1], inner[:, 2]
        deriv = jnp.stack([a * (y - x), x * (r - z) - y, x * y - self.b * z], axis=1)
        state = jnp.clip(inner + self.dt * deriv, -self.state_bound, self.state_bound)
        return state, (state[0, 2] - state[1, 2]) ** 2

    def meta_loss(self, theta: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Mean per-step loss over one full episode (``lax.scan``).

        ``key`` draws the start noise; it may be omitted only when ``start_noise == 0``.
        """
        if key is None:
            if self.start_noise > 0:
                raise ValueError("Lorenz.meta_loss needs a key when start_noise > 0")
            key = jax.random.PRNGKey(0)

        def body(state, _):
            return self.step(theta, state, None, None, None)

        _, losses = jax.lax.scan(body, self.init(theta, key, None), None, length=self.horizon)
        return jnp.mean(losses)
