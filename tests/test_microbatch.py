"""Micro-batched network calls (`jdpm.parallel.microbatch`): the same outputs as one call on the whole batch."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import jdpm
from jdpm import generate, parallel
from jdpm.parallel import microbatch
from jdpm.training import trainer


def _network(variables, x, t, cond):
  """A stand-in network whose every output row depends on its own example's inputs only."""
  h = jnp.tanh(x * variables["w"] + t[:, None] + cond["label"][:, None] * cond["shared"])
  return {"out": h, "total": jnp.sum(h, axis=-1)}


def _inputs(batch):
  keys = jax.random.split(jax.random.key(0), 2)
  x = jax.random.normal(keys[0], (batch, 5))
  t = jax.random.uniform(keys[1], (batch,)) * 1000
  cond = {"label": jnp.arange(batch) % 3 * 1.0, "shared": jnp.linspace(0, 1, 5)}  # "shared" has no batch axis
  return {"w": jnp.float32(0.7)}, x, t, cond


@pytest.mark.parametrize("batch, micro_batch, shards", [(8, 3, 1), (8, 3, 2), (8, 1, 8), (12, 4, 2), (8, 8, 2)])
def test_micro_batched_equals_the_whole_batch(batch, micro_batch, shards):
  variables, x, t, cond = _inputs(batch)
  calls = []

  def counting(*args):
    calls.append(args[1].shape[0])
    return _network(*args)

  got = jax.jit(parallel.micro_batched(counting, micro_batch, shards))(variables, x, t, cond)
  want = _network(variables, x, t, cond)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6)
  # Each traced call sees at most `micro_batch` examples of each shard, in equal micro-batches.
  assert calls and max(calls) <= micro_batch * shards and batch % calls[-1] == 0


def test_micro_batched_keeps_a_sharded_batch_on_its_devices():
  mesh = parallel.make_mesh()
  variables, x, t, cond = _inputs(16)
  batch = parallel.batch_sharding(mesh)
  x, t = jax.device_put(x, batch), jax.device_put(t, batch)
  fn = jax.jit(parallel.micro_batched(_network, 1, mesh.size))
  got = fn(variables, x, t, cond)
  np.testing.assert_allclose(got["out"], _network(variables, x, t, cond)["out"], rtol=1e-6, atol=1e-6)
  # Splitting and joining only reshape within each device's block: no collective in the program.
  hlo = fn.lower(variables, x, t, cond).compile().as_text()
  assert not any(op in hlo for op in ("all-to-all", "all-gather", "collective-permute"))


def _tiny_dit():
  return jdpm.models.create("DiT", hidden_size=32, depth=1, num_heads=2, patch_size=4, input_size=8,
                            in_channels=3, num_classes=4)


def test_widest_activation_is_the_mlp_hidden_layer():
  model = _tiny_dit()
  tokens, hidden = (8 // 4)**2, 4 * 32  # mlp_ratio 4
  assert parallel.widest_activation_bytes(model, model.sample_shape, jnp.zeros((3,), jnp.int32)) == (
      tokens * hidden * 4)
  assert parallel.cpu_micro_batch(model, model.sample_shape, jnp.zeros((3,), jnp.int32),
                                  budget_bytes=3 * tokens * hidden * 4) == 3


def test_sampling_over_micro_batches_draws_the_same_images(monkeypatch):
  model = _tiny_dit()
  labels = jnp.arange(16) % 4
  variables = model.init(jax.random.key(1), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)), labels[:1])
  draw = lambda: generate.sample_images(model, variables, labels, jax.random.key(2), steps=3, cfg_scale=2.0)
  monkeypatch.setattr(microbatch, "CPU_MICRO_BATCH_BYTES", 2**40)  # one call on the whole batch
  whole = draw()
  monkeypatch.setattr(microbatch, "CPU_MICRO_BATCH_BYTES", 1)  # one example per device per call
  np.testing.assert_allclose(draw(), whole, rtol=1e-5, atol=1e-5)


def test_automatic_grad_accumulation_keeps_micro_batches_within_the_budget():
  model = _tiny_dit()
  per_example = (8 // 4)**2 * 4 * 32 * 4  # the MLP hidden activation, bytes
  # 16 examples per device, at most 3 at a time: the fewest equal micro-batches that fit are 8 of 2.
  assert parallel.cpu_grad_accum_steps(model, 16, budget_bytes=3 * per_example) == 8
  assert parallel.cpu_grad_accum_steps(model, 16, budget_bytes=16 * per_example) == 1
  config = ml_collections.ConfigDict(dict(grad_accum_steps=2, batch_size=16))
  assert trainer.grad_accum_steps(config, model) == 2  # an explicit value is kept
  config.grad_accum_steps = 0
  assert trainer.grad_accum_steps(config, model) == 1  # the tiny model's 2 examples per device fit the cache
