"""Random weights for tests, without compiling a module's init (a jitted or eager init is slow on CPU)."""

import jax
import jax.numpy as jnp
import numpy as np


def random_like(shapes, seed=0, scale=0.1):
  """Arrays with the shapes and dtypes of the tree `shapes` (e.g. `jax.eval_shape` output), i.i.d.
  scale·N(0, 1): every value non-zero, so no zero-initialised layer hides the gradients upstream of it."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), shapes)


def random_variables(module, *args, seed=0, scale=0.1):
  """`module`'s variables for inputs `args`, filled by `random_like`."""
  return random_like(jax.eval_shape(module.init, jax.random.key(0), *args), seed, scale)
