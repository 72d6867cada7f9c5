"""RNNMLPLOpt's momentum accumulators, every decay: m_i <- b_i m_i + (1 - b_i) g.

(test_lopt_zoo checks the first momentum only, whose decay 0.5 is symmetric under
swapping b and 1 - b.) Values are small exact binary fractions, so float32 rounding is
~1e-7 relative; rtol 1e-6.
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
