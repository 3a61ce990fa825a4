"""The compiled gradient of a transformer stays linear in depth (models/layers.residual_barrier)."""

import re

import jax
import jax.numpy as jnp
import numpy as np

import jdpm
from jdpm.models import layers


def _compiled_instructions(depth):
  """Instructions in the optimised HLO of d(sum(out²))/dparams for a micro DiT of this depth."""
  model = jdpm.models.create("DiT", hidden_size=32, depth=depth, num_heads=2, patch_size=4, input_size=16,
                             in_channels=3, num_classes=4)
  x, t, y = jnp.zeros((2, 16, 16, 3)), jnp.zeros((2,)), jnp.zeros((2,), jnp.int32)
  variables = model.init(jax.random.key(0), x, t, y)
  grad = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x, t, y) ** 2)))
  text = grad.lower(variables["params"]).compile().as_text()
  return sum(1 for line in text.splitlines() if re.match(r"\s+(ROOT )?%\S+ = ", line))


def test_gradient_program_grows_linearly_with_depth():
  # Without the barrier XLA:CPU fuses the residual-gradient sum of all later blocks into every
  # consumer: 4352 / 10369 / 18689 instructions at depth 2 / 4 / 6 (increment ratio 1.38).
  # With it: equal increments per block (ratio 1.0).
  c2, c4, c6 = (_compiled_instructions(d) for d in (2, 4, 6))
  assert (c6 - c4) / (c4 - c2) < 1.15, (c2, c4, c6)


def test_residual_barrier_is_the_identity_for_values_and_derivatives():
  f = lambda x: jnp.sum(jnp.sin(layers.residual_barrier(2 * x)) ** 2)
  g = lambda x: jnp.sum(jnp.sin(2 * x) ** 2)
  x = jnp.linspace(-1, 1, 5)
  np.testing.assert_allclose(jax.grad(f)(x), jax.grad(g)(x), rtol=1e-6)
  np.testing.assert_allclose(jax.jvp(f, (x,), (x,))[1], jax.jvp(g, (x,), (x,))[1], rtol=1e-6)
  np.testing.assert_allclose(jax.hessian(f)(x), jax.hessian(g)(x), rtol=1e-5, atol=1e-6)
  nan = jnp.array([jnp.nan, 1.0])
  assert np.isnan(jax.grad(lambda x: jnp.sum(layers.residual_barrier(x) * x))(nan)[0])
