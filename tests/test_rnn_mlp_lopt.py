"""RNNMLPLOpt against its documented formulas, where training could hide a mistake.

- Momentum accumulators, every decay: m_i <- b_i m_i + (1 - b_i) g (test_lopt_zoo checks
  the first momentum only, whose decay 0.5 is symmetric under swapping b and 1 - b).
- The update: -out_0 exp(exp_mult out_1) step_mult per parameter. A flipped sign or a
  swapped output would still meta-train (the last layer learns to compensate) but would
  silently turn published meta-parameters into ascent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lopt.optimizers import RNNMLPLOpt


def test_every_momentum_is_an_ema_with_its_own_decay():
    lopt = RNNMLPLOpt(momentum_decays=(0.5, 0.9, 0.99, 0.75))
    opt = lopt.to_optax(lopt.init(jax.random.PRNGKey(0)), 10)
    params = {"w": jnp.zeros((2, 3))}
    state = opt.init(params)
    update = jax.jit(opt.update)
    g1 = jnp.full((2, 3), 2.0)
    g2 = jnp.asarray([[1.0, -1.0, 0.5], [0.0, 2.0, -2.0]])  # within the clip bound (10 x 2)
    _, state = update({"w": g1}, state, params, value=1.0)
    _, state = update({"w": g2}, state, params, value=1.0)
    for i, b in enumerate(lopt.momentum_decays):
        expected = b * (1 - b) * np.asarray(g1) + (1 - b) * np.asarray(g2)
        np.testing.assert_allclose(state.momenta["w"][i], expected, rtol=1e-6, atol=1e-7, err_msg=f"decay {b}")


def test_update_is_minus_direction_times_exp_magnitude_times_step_mult():
    """A hand-set output layer (zero weights, bias (d, a)) makes every parameter's MLP
    output (d, a), whatever the features, so the update is -d exp(a exp_mult) step_mult."""
    lopt = RNNMLPLOpt()
    theta = lopt.init(jax.random.PRNGKey(0))
    last = f"layer_{len(theta['mlp']) - 1}"
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    grads = {"w": jnp.full((2, 3), 0.3), "b": jnp.asarray([1.0, -2.0, 0.5])}
    for direction, magnitude in ((1.0, 0.0), (-2.0, 0.5)):
        mlp = dict(theta["mlp"])
        mlp[last] = {"w": jnp.zeros_like(mlp[last]["w"]), "b": jnp.asarray([direction, magnitude])}
        opt = lopt.to_optax({**theta, "mlp": mlp}, 10)
        updates, _ = opt.update(grads, opt.init(params), params, value=1.0)
        expected = -direction * np.exp(magnitude * lopt.exp_mult) * lopt.step_mult
        # a few float32 multiplications: ~1e-7 relative
        for leaf in jax.tree.leaves(updates):
            np.testing.assert_allclose(np.asarray(leaf), expected, rtol=1e-6)
