"""Running a network over a large batch in cache-sized micro-batches, one after another (for XLA:CPU).

XLA:CPU executes a program's ops one after another, each over whole arrays. Once a layer's activations
outgrow the cache, every elementwise pass and every matmul operand streams from memory, and the time per
example rises with the batch: a DiT-S/2 forward over 32 examples on one device took 1.5x as long as the
same 32 examples in four `lax.map` steps of 8 (the tiny DiT over 512: 3x as long as 16 steps of 32). GPUs
and TPUs want the opposite, one large batch, so `cpu_micro_batch` is None there.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# A micro-batch's widest activation per device, in bytes. Measured on XLA:CPU (2 cores, 1 MiB L2 each,
# 32 MiB L3), forward passes over 32 examples: DiT-S/2, EDT-S/2 and MDTv2-S/2 were fastest in micro-batches
# of 4-8 (their MLP's hidden activation is 1.2-1.5 MiB per example), and over 8 examples splitting in two
# lost up to 8% (EDT-S/2); the tiny DiT (128 KiB) over 500 examples took 502 ms whole, 286 ms in 5 calls of
# 100, 263 ms in 10 of 50. 12 MiB keeps 8 S/2 examples whole and gives the tiny DiT 96.
CPU_MICRO_BATCH_BYTES = 12 * 2**20
# The same for a training step, whose backward pass keeps every layer's activations and adds their
# gradients: same-run A/Bs of DiT-S/2 at 16 examples per device trained 1.53x faster in micro-batches of 4
# and 1.28x in micro-batches of 8 (BENCHMARKS.md). 6 MiB gives the S/2 models 4.
CPU_TRAIN_MICRO_BATCH_BYTES = 6 * 2**20


@functools.lru_cache(maxsize=64)
def _widest_activation_bytes(model, x_struct, t_struct, cond_treedef, cond_structs):
  cond = jax.tree.unflatten(cond_treedef, cond_structs)
  _, variables = jax.eval_shape(
      lambda x, t, c: model.init_with_output(jax.random.key(0), x, t, c, capture_intermediates=True),
      x_struct, t_struct, cond)
  outputs = jax.tree.leaves(variables.get("intermediates", {}))
  return max((int(np.prod(a.shape[1:])) * a.dtype.itemsize for a in outputs), default=0)


def widest_activation_bytes(model, sample_shape, cond):
  """Bytes per example of the largest output of any submodule of `model` in one forward pass.

  Found by tracing (``jax.eval_shape``, nothing is computed) one example through ``model.init`` with
  Flax's ``capture_intermediates``; cached per model and shapes. Operations inside a module that are not
  submodules (e.g. attention weights) are not seen: for the transformers here the MLP's hidden activation
  is the widest.

  Args:
    model: a jdpm denoiser, ``model(x, t, cond)``.
    sample_shape: (H, W, C) of one example.
    cond: the batch's condition (any pytree whose leaves have the batch as leading axis).
  """
  x_struct = jax.ShapeDtypeStruct((1,) + tuple(sample_shape), jnp.float32)
  t_struct = jax.ShapeDtypeStruct((1,), jnp.float32)
  leaves, treedef = jax.tree.flatten(cond)
  structs = tuple(jax.ShapeDtypeStruct((1,) + tuple(np.shape(a)[1:]), jnp.result_type(a)) for a in leaves)
  return _widest_activation_bytes(model, x_struct, t_struct, treedef, structs)


def cpu_micro_batch(model, sample_shape, cond, budget_bytes=None):
  """Examples per device per network call for `micro_batched` on CPU; None on other backends.

  The most examples whose widest activation (`widest_activation_bytes`) fits `budget_bytes` (default
  ``CPU_MICRO_BATCH_BYTES``), at least 1. None as well for a model that is not a Flax module (e.g. an
  analytic denoiser), whose activations cannot be traced.
  """
  if jax.default_backend() != "cpu" or not isinstance(model, nn.Module):
    return None
  budget = CPU_MICRO_BATCH_BYTES if budget_bytes is None else budget_bytes
  return max(1, budget // max(1, widest_activation_bytes(model, sample_shape, cond)))


def micro_batch_count(per_shard, micro_batch):
  """The fewest micro-batches that divide `per_shard` examples into equal parts of at most `micro_batch`."""
  return min(k for k in range(1, per_shard + 1) if per_shard % k == 0 and per_shard // k <= micro_batch)


def split_micro_batches(a, k):
  """(B, ...) -> (k, B / k, ...): micro-batch j takes examples j, j + k, j + 2k, ...

  With the batch in contiguous per-device blocks whose size is a multiple of k, each device's block then
  contributes equally to every micro-batch, so the split moves no data between devices.
  """
  return jnp.swapaxes(a.reshape((a.shape[0] // k, k) + a.shape[1:]), 0, 1)


def join_micro_batches(a):
  """The inverse of `split_micro_batches`: (k, B / k, ...) -> (B, ...)."""
  return jnp.swapaxes(a, 0, 1).reshape((-1,) + a.shape[2:])


def micro_batched(apply_fn, micro_batch, shards=1):
  """``apply_fn(variables, x, t, cond, **kw)`` computed over micro-batches of the batch, one after another.

  Each of the `shards` devices holding a contiguous block of the batch (`jdpm.parallel.batch_sharding`)
  contributes at most `micro_batch` examples to every call, in the fewest equal micro-batches
  (`micro_batch_count`), and the split (`split_micro_batches`) moves no data between devices. Every
  argument leaf whose leading axis is the batch is split; other leaves (a scalar time, a shared condition)
  are passed whole. Outputs equal the whole batch's up to float rounding.

  Args:
    apply_fn: the network, e.g. a Flax ``model.apply``; its outputs have the batch as leading axis.
    micro_batch: examples per shard per call; None returns `apply_fn` itself.
    shards: number of devices the batch is split over.
  """
  if micro_batch is None:
    return apply_fn

  def apply(variables, x, t, cond, **kwargs):
    batch = x.shape[0]
    calls = 1 if batch % shards else micro_batch_count(batch // shards, micro_batch)
    if calls == 1:
      return apply_fn(variables, x, t, cond, **kwargs)
    leaves, treedef = jax.tree.flatten((x, t, cond))
    is_batched = [np.ndim(a) >= 1 and np.shape(a)[0] == batch for a in leaves]

    def one_call(parts):
      parts = iter(parts)
      args = jax.tree.unflatten(treedef, [next(parts) if b else a for a, b in zip(leaves, is_batched)])
      return apply_fn(variables, *args, **kwargs)

    parts = [split_micro_batches(jnp.asarray(a), calls) for a, b in zip(leaves, is_batched) if b]
    return jax.tree.map(join_micro_batches, jax.lax.map(one_call, parts))

  return apply


def cpu_grad_accum_steps(model, per_device_batch, budget_bytes=None):
  """Micro-batches per training step on CPU for a class-conditional denoiser; 1 on other backends.

  The fewest that divide `per_device_batch` and leave each device at most `cpu_micro_batch` examples at a
  time, for a budget of `budget_bytes` (default ``CPU_TRAIN_MICRO_BATCH_BYTES``). Accumulating the
  gradients over them gives the full batch's step (`jdpm.training.step`).

  Args:
    model: a denoiser called as ``model(x, t, labels)``.
    per_device_batch: examples of the global batch on each device.
  """
  budget = CPU_TRAIN_MICRO_BATCH_BYTES if budget_bytes is None else budget_bytes
  micro = cpu_micro_batch(model, model.sample_shape, jnp.zeros((1,), jnp.int32), budget)
  return 1 if micro is None else micro_batch_count(per_device_batch, micro)
