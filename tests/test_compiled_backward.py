"""The CPU rewrites of models/layers keep the values and the derivatives: the residual barrier (the compiled
gradient of a transformer stays linear in depth), the softmax and logit-bias gradients written by hand, and
the qkv projection through kernel slices."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def test_softmax_last_has_softmax_values_and_gradient():
  logits = 4 * jax.random.normal(jax.random.key(0), (2, 3, 7, 7))
  cotangent = jax.random.normal(jax.random.key(1), logits.shape)
  np.testing.assert_array_equal(layers.softmax_last(logits), jax.nn.softmax(logits, axis=-1))
  grads = [jax.grad(lambda x: jnp.sum(f(x) * cotangent))(logits)
           for f in (layers.softmax_last, lambda x: jax.nn.softmax(x, axis=-1))]
  # Equal up to float32 rounding (the two compute y·(g - Σ g·y) in different orders).
  np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_logit_bias_gradient_sums_over_the_broadcast_axes():
  logits = jax.random.normal(jax.random.key(0), (4, 3, 5, 5))
  for shape in [(1, 3, 5, 5), (3, 5, 5), (4, 3, 5, 5), (4, 1, 1, 5), (5,)]:
    bias = jax.random.normal(jax.random.key(1), shape)
    grads = [jax.grad(lambda x, b: jnp.sum(jnp.sin(add(x, b))), argnums=(0, 1))(logits, bias)
             for add in (layers.add_logit_bias, jnp.add)]
    assert grads[0][1].shape == shape
    for ours, plain in zip(*grads):
      np.testing.assert_allclose(ours, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("use_bias", [True, False])
def test_split_dense_is_the_fused_dense(use_bias):
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  fused = nn.Dense(12, use_bias=use_bias, kernel_init=layers.xavier_uniform, name="qkv")
  split = layers.SplitDense(4, 3, use_bias=use_bias, name="qkv")
  # Same parameter names, shapes and initial values for the same key (checkpoints and conversions).
  params = fused.init(jax.random.key(1), x)
  split_params = split.init(jax.random.key(1), x)
  assert jax.tree.structure(split_params) == jax.tree.structure(params)
  for ours, want in zip(jax.tree.leaves(split_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(ours, want)
  expected = jnp.split(fused.apply(params, x), 3, axis=-1)
  for ours, want in zip(split.apply(params, x), expected):
    np.testing.assert_allclose(ours, want, rtol=1e-6, atol=1e-6)
