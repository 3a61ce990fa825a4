"""Conditioning as a pytree, frozen parameters and objectives by name, end to end on a toy model.

A toy denoiser conditioned on a dict {"label": (B,), "context": (B, L, D)} with a frozen context encoder
trains for a few steps (the frozen parameters stay bit-identical, the optimizer never sees them) and
is sampled with classifier-free guidance through the public `jdpm.samplers.sample`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdpm
from jdpm import generate
from jdpm.diffusion import conditioning
from jdpm.training import freeze, objectives
from jdpm.training.state import create_train_state
from jdpm.training.step import make_update_fn

NUM_CLASSES, L, D = 3, 4, 5


class ToyDictDenoiser(nn.Module):
  """eps(x, t, {"label", "context"}): a per-pixel MLP on x, the time and both conditions."""
  size: int = 8
  learn_sigma: bool = False

  @property
  def sample_shape(self):
    return (self.size, self.size, 2)

  @property
  def null_condition(self):
    return {"label": NUM_CLASSES, "context": np.zeros((L, D), np.float32)}

  @nn.compact
  def __call__(self, x, t, cond):
    label = nn.Embed(NUM_CLASSES + 1, 16, name="label_embed")(cond["label"])
    context = nn.Dense(16, name="context_encoder")(cond["context"]).mean(axis=1)
    time = nn.Dense(16, name="time")(jnp.asarray(t, jnp.float32)[:, None] / 1000.0)
    h = nn.Dense(16, name="inp")(x) + (label + context + time)[:, None, None, :]
    return nn.Dense(x.shape[-1], name="out")(nn.silu(h))


def _batch(rng, b=8):
  k1, k2, k3 = jax.random.split(rng, 3)
  return {"image": jax.random.uniform(k1, (b, 8, 8, 2), minval=-1, maxval=1),
          "label": jax.random.randint(k2, (b,), 0, NUM_CLASSES),
          "context": jax.random.normal(k3, (b, L, D))}


def test_condition_functions_on_a_dict():
  cond = {"label": jnp.array([0, 2]), "context": jnp.ones((2, L, D))}
  null = {"label": NUM_CLASSES, "context": np.zeros((L, D), np.float32)}
  dropped = conditioning.drop(cond, null, jnp.array([True, False]))
  np.testing.assert_array_equal(dropped["label"], [NUM_CLASSES, 2])
  np.testing.assert_array_equal(dropped["context"][0], 0.0)
  np.testing.assert_array_equal(dropped["context"][1], 1.0)
  doubled = conditioning.with_null(cond, null)
  assert doubled["context"].shape == (4, L, D)
  np.testing.assert_array_equal(doubled["label"], [0, 2, NUM_CLASSES, NUM_CLASSES])
  assert conditioning.batch_size(cond) == 2
  with pytest.raises(ValueError, match="structure of the condition"):
    conditioning.drop(cond, NUM_CLASSES, jnp.array([True, False]))
  with pytest.raises(ValueError, match="does not broadcast"):
    conditioning.null_like(cond, {"label": 0, "context": np.zeros((3, 3))})
  with pytest.raises(ValueError, match="disagree on the batch size"):
    conditioning.batch_size({"a": jnp.zeros(2), "b": jnp.zeros(3)})


def test_label_dropping_equals_the_models_own():
  """Dropping labels with `conditioning.drop` gives DiT exactly what its force_drop_ids did."""
  model = jdpm.models.create("DiT", hidden_size=32, depth=1, num_heads=2, patch_size=4, input_size=8,
                             in_channels=3, num_classes=5)
  x, t = jnp.ones((4, 8, 8, 3)), jnp.array([1, 10, 100, 999])
  y, drop = jnp.array([0, 1, 2, 3]), jnp.array([1, 0, 1, 0])
  variables = model.init(jax.random.key(0), x, t, y)
  ours = model.apply(variables, x, t, conditioning.drop(y, model.null_condition, drop))
  theirs = model.apply(variables, x, t, y, force_drop_ids=drop)
  np.testing.assert_array_equal(ours, theirs)


def test_freeze_split_and_merge():
  params = {"a": {"w": jnp.ones(2), "b": jnp.zeros(1)}, "c": {"w": jnp.ones(3)}}
  trainable, frozen = freeze.split(params, ["a/.*"])
  assert freeze.paths(frozen) == ["a/b", "a/w"] and freeze.paths(trainable) == ["c/w"]
  assert freeze.paths(freeze.merge(trainable, frozen)) == freeze.paths(params)
  with pytest.raises(ValueError, match="match no parameter"):
    freeze.split(params, ["typo/.*"])
  with pytest.raises(ValueError, match="freeze every parameter"):
    freeze.split(params, [".*"])


def test_objectives_by_name():
  assert objectives.get("denoising") is objectives.DenoisingObjective
  assert {"denoising", "edt_masking", "mdt_masking"} <= set(objectives.names())
  with pytest.raises(ValueError, match="unknown objective"):
    objectives.get("denoisng")


def test_dict_condition_with_frozen_encoder_trains_and_samples_with_cfg():
  model = ToyDictDenoiser()
  objective = objectives.DenoisingObjective(
      model, jdpm.diffusion.create_diffusion("", learn_sigma=False), condition_keys=("label", "context"),
      class_dropout_prob=0.3)
  assert objective.batch_keys == ("image", "label", "context")
  params = objective.init_params(jax.random.key(0), _batch(jax.random.key(1), 1))
  trainable, frozen = freeze.split(params, ["context_encoder/.*"])
  optimizer = optax.adam(1e-2)
  state = create_train_state(trainable, optimizer, jax.random.key(2), extra=objective.init_extra())
  assert not any("context_encoder" in p for p in freeze.paths(state.opt_state))
  frozen_before = jax.tree.map(np.asarray, frozen)
  update = jax.jit(make_update_fn(objective, optimizer, ema_decay=0.5))
  before = jax.tree.map(np.asarray, state.params)
  losses = []
  for i in range(20):
    state, metrics = update(state, _batch(jax.random.key(10 + i)), frozen)
    losses.append(float(metrics["loss"]))
  jax.tree.map(np.testing.assert_array_equal, frozen, frozen_before)  # bit-identical
  assert freeze.paths(state.params) == freeze.paths(before)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before)))
  assert np.mean(losses[-5:]) < np.mean(losses[:5])

  # Classifier-free guidance with a dict condition through the public sampler.
  variables = {"params": freeze.merge(state.ema_params, frozen)}
  sched = jdpm.diffusion.VPSchedule.discrete(np.linspace(1e-4, 0.02, 1000))
  cond = {"label": jnp.array([0, 1, 2, 1]), "context": jax.random.normal(jax.random.key(3), (4, L, D))}
  noise_fn = jdpm.samplers.make_noise_fn(model.apply, variables, sched, y=cond, null=model.null_condition,
                                         guidance_scale=3.0)
  x_T = jax.random.normal(jax.random.key(4), (4, 8, 8, 2))
  x0 = jdpm.samplers.sample(noise_fn, sched, x_T, method="unipc", steps=5)
  assert x0.shape == x_T.shape and bool(jnp.all(jnp.isfinite(x0)))
  # The guided prediction is u + 3 (c - u) with u from the null condition of both parts.
  t = jnp.full((4,), 0.5)
  t_in = (t - 1.0 / 1000) * 1000.0
  c = model.apply(variables, x_T, t_in, cond)
  u = model.apply(variables, x_T, t_in, conditioning.null_like(cond, model.null_condition))
  np.testing.assert_allclose(noise_fn(x_T, t), u + 3.0 * (c - u), rtol=1e-5, atol=1e-6)

  # The same guidance (with a window) serves DDPM, through the generation helper.
  samples = generate.sample_images(model, variables, cond, jax.random.key(5), sampler="ddpm", steps=4,
                                   cfg_scale=3.0, guidance_window=(0.0, 0.5),
                                   mesh=jdpm.parallel.make_mesh(devices=jax.devices()[:1]))
  assert samples.shape == (4, 8, 8, 2) and bool(jnp.all(jnp.isfinite(samples)))


def test_ddpm_guidance_window_counts_calls():
  """DDPM with a guidance window: guided (doubled-batch) calls exactly in the window's fraction of steps."""
  model = ToyDictDenoiser()
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 2)), jnp.zeros((1,)),
                      {"label": jnp.zeros((1,), int), "context": jnp.zeros((1, L, D))})
  calls = []

  def apply(variables, x, t, cond):
    jax.debug.callback(lambda n: calls.append(int(n)), x.shape[0])
    return model.apply(variables, x, t, cond)

  cond = {"label": jnp.array([0, 1]), "context": jnp.ones((2, L, D))}
  guidance = jdpm.samplers.make_guidance(2.0, model.null_condition, window=(0.0, 0.5))
  diffusion = jdpm.diffusion.create_diffusion("8", learn_sigma=False)
  fn = generate._ddpm_model_fn(apply)  # pylint: disable=protected-access
  jdpm.diffusion.ddpm_sample(fn, diffusion, jnp.zeros((2, 8, 8, 2)), jax.random.key(1),
                             model_kwargs=dict(variables=params, cond=cond, guidance=guidance,
                                               model_times=jnp.asarray(diffusion.timestep_map, jnp.int32)))
  jax.effects_barrier()
  assert calls == [4] * 4 + [2] * 4
