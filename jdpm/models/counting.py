"""Parameter and multiply-accumulate (MAC) counts without allocating weights.

Both work on any denoiser called as ``model.apply(variables, x, t, y, **kwargs)`` whose module
has ``input_size`` and ``in_channels`` attributes (or given an explicit ``input_shape``).

MACs are counted analytically from the traced forward pass (a jaxpr): every ``dot_general``
(dense layers, attention matmuls, einsums) and ``conv_general_dilated`` contributes
``output size × contraction size``; element-wise work (norms, softmax, activations) is not
counted. This is the convention of the DiT/EDT/MDT papers' "GFLOPs" (which are GMACs).
"""

import math

import jax
import jax.numpy as jnp


def example_inputs(model, batch=1, input_shape=None):
  """Abstract (x, t, y) for ``model``: x (batch, H, W, C) float32, t (batch,) float32,
  y (batch,) int32. ``input_shape`` = (H, W, C) overrides the model's attributes."""
  if input_shape is None:
    try:
      input_shape = (model.input_size, model.input_size, model.in_channels)
    except AttributeError as e:
      raise ValueError(f"{type(model).__name__} has no input_size/in_channels attributes: pass "
                       "input_shape=(H, W, C).") from e
  x = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
  t = jax.ShapeDtypeStruct((batch,), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)
  return x, t, y


def abstract_variables(model, input_shape=None):
  """``model.init`` evaluated abstractly: a pytree of ShapeDtypeStruct, nothing allocated."""
  x, t, y = example_inputs(model, 1, input_shape)
  return jax.eval_shape(model.init, jax.random.key(0), x, t, y)


def count_params(model_or_variables, input_shape=None):
  """Number of trainable parameters (the ``"params"`` collection).

  Args:
    model_or_variables: a Flax module (counted through ``jax.eval_shape``) or a variables /
      params pytree.
    input_shape: optional (H, W, C) for modules without input_size/in_channels.
  """
  tree = model_or_variables
  if hasattr(tree, "init") and hasattr(tree, "apply"):
    tree = abstract_variables(tree, input_shape)
  if isinstance(tree, dict) and "params" in tree:
    tree = tree["params"]
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def _dot_general_macs(eqn):
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs_shape = eqn.invars[0].aval.shape
  contraction = math.prod(lhs_shape[d] for d in lhs_contract)
  return math.prod(eqn.outvars[0].aval.shape) * contraction


def _conv_macs(eqn):
  rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial...)
  rhs_shape = eqn.invars[1].aval.shape
  per_output = rhs_shape[rhs_spec[1]] * math.prod(rhs_shape[d] for d in rhs_spec[2:])
  return math.prod(eqn.outvars[0].aval.shape) * per_output


def _sub_jaxprs(value):
  if isinstance(value, jax.extend.core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jax.extend.core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for item in value:
      yield from _sub_jaxprs(item)


def jaxpr_macs(jaxpr):
  """MACs of a jaxpr, recursing into calls; scans count ``length`` times, conds their
  largest branch."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_general_macs(eqn)
    elif name == "conv_general_dilated":
      total += _conv_macs(eqn)
    elif name == "cond":
      total += max(jaxpr_macs(b.jaxpr) for b in eqn.params["branches"])
    else:
      inner = sum(jaxpr_macs(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
      total += inner * (eqn.params["length"] if name == "scan" else 1)
  return total


def count_macs(model, batch=1, input_shape=None, **apply_kwargs):
  """Multiply-accumulates of one forward pass ``model.apply(variables, x, t, y, **apply_kwargs)``
  at the given batch size (inference mode unless ``apply_kwargs`` say otherwise).

  Traces abstractly (no weights allocated, nothing compiled). Returns an int.
  """
  variables = abstract_variables(model, input_shape)
  x, t, y = example_inputs(model, batch, input_shape)

  def forward(variables, x, t, y):
    return model.apply(variables, x, t, y, **apply_kwargs)

  closed = jax.make_jaxpr(forward)(variables, x, t, y)
  return int(jaxpr_macs(closed.jaxpr))


def format_count(n, unit=""):
  """1.2345e8 → '123.45 M'."""
  for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
    if abs(n) >= scale:
      return f"{n / scale:.2f} {prefix}{unit}"
  return f"{n} {unit}".strip()


__all__ = ["abstract_variables", "count_macs", "count_params", "example_inputs", "format_count",
           "jaxpr_macs"]
