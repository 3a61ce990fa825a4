"""The update step: gradient accumulation, EMA, and equality across device layouts (toy objective)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdpm import parallel
from jdpm.training.state import create_train_state
from jdpm.training.step import jit_update_fn, make_update_fn


@dataclasses.dataclass(frozen=True)
class NoisyRegression:
  """y = tanh(x W1) W2 fitted to noisy targets; the noise is the step's randomness."""

  def draw(self, rng, batch, extra):
    return dict(batch, noise=0.1 * jax.random.normal(rng, batch["y"].shape))

  def per_example_loss(self, params, batch):
    pred = jnp.tanh(batch["x"] @ params["w1"]) @ params["w2"]
    losses = jnp.mean((pred - batch["y"] - batch["noise"]) ** 2, axis=-1)
    return losses, {"abs_err": jnp.mean(jnp.abs(pred - batch["y"]), axis=-1)}

  def update_extra(self, extra, batch, losses, aux):
    return extra + jnp.sum(losses)


def _params(rng):
  k1, k2 = jax.random.split(rng)
  return {"w1": jax.random.normal(k1, (6, 32)) * 0.3, "w2": jax.random.normal(k2, (32, 3)) * 0.3}


def _batches(n, batch=16):
  rs = np.random.RandomState(0)
  return [{"x": rs.randn(batch, 6).astype(np.float32), "y": rs.randn(batch, 3).astype(np.float32)}
          for _ in range(n)]


def _train(mesh, steps=5, grad_accum_steps=1, min_fsdp_size=2**18):
  optimizer = optax.adamw(1e-2, weight_decay=0.01)
  update = make_update_fn(NoisyRegression(), optimizer, ema_decay=0.9, grad_accum_steps=grad_accum_steps)
  state = create_train_state(_params(jax.random.key(0)), optimizer, jax.random.key(1), extra=jnp.float32(0))
  shardings = jax.tree.map(lambda a: parallel.param_sharding(a.shape, mesh, min_fsdp_size), state)
  state = jax.device_put(state, shardings)
  step = jit_update_fn(update, shardings, parallel.batch_sharding(mesh), parallel.replicated(mesh))
  losses = []
  for batch in _batches(steps):
    state, metrics = step(state, jax.device_put(batch, parallel.batch_sharding(mesh)))
    losses.append(float(metrics["loss"]))
  return jax.device_get(state), np.array(losses)


def test_grad_accumulation_equals_full_batch():
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  full, full_losses = _train(mesh, grad_accum_steps=1)
  accum, accum_losses = _train(mesh, grad_accum_steps=4)
  np.testing.assert_allclose(accum_losses, full_losses, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(accum.params), jax.tree.leaves(full.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert float(full.extra) == pytest.approx(float(accum.extra), rel=1e-6)


@pytest.mark.parametrize("fsdp,min_fsdp_size", [(1, 2**18), (2, 0), (8, 0)])
def test_eight_devices_equal_one(fsdp, min_fsdp_size):
  one, one_losses = _train(parallel.make_mesh(devices=jax.devices()[:1]))
  many, many_losses = _train(parallel.make_mesh(fsdp=fsdp), min_fsdp_size=min_fsdp_size)
  np.testing.assert_allclose(many_losses, one_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(many.params), jax.tree.leaves(one.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert int(many.step) == 5


def test_ema_and_metrics():
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  optimizer = optax.sgd(0.1)
  update = make_update_fn(NoisyRegression(), optimizer, ema_decay=0.9, lr_schedule=optax.constant_schedule(0.1))
  p0 = _params(jax.random.key(0))
  state = create_train_state(p0, optimizer, jax.random.key(1), extra=jnp.float32(0))
  new_state, metrics = jax.jit(update)(state, _batches(1)[0])
  # One step: ema = 0.9 * p0 + 0.1 * p1 exactly.
  for e, p_old, p_new in zip(*(jax.tree.leaves(t) for t in (new_state.ema_params, p0, new_state.params))):
    np.testing.assert_allclose(e, 0.9 * p_old + 0.1 * p_new, rtol=1e-6)
  # SGD: p1 = p0 - lr * g, so the reported grad norm must equal |p0 - p1| / lr.
  delta = jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p0),
                                                                 jax.tree.leaves(new_state.params))))
  assert float(metrics["grad_norm"]) == pytest.approx(float(delta) / 0.1, rel=1e-4)
  assert float(metrics["lr"]) == pytest.approx(0.1)
  assert set(metrics) >= {"loss", "grad_norm", "param_norm", "lr", "abs_err"}


def test_norms_only_on_due_steps():
  """norms_every / last_step: the norms of a due step equal the every-step ones; other steps report NaN."""
  optimizer = optax.sgd(0.1)
  every = make_update_fn(NoisyRegression(), optimizer, ema_decay=0.9)
  sparse = make_update_fn(NoisyRegression(), optimizer, ema_decay=0.9, norms_every=3, last_step=5)
  state = create_train_state(_params(jax.random.key(0)), optimizer, jax.random.key(1), extra=jnp.float32(0))
  states = {"every": state, "sparse": state}
  for step, batch in enumerate(_batches(6), start=1):
    states["every"], m_every = jax.jit(every)(states["every"], batch)
    states["sparse"], m_sparse = jax.jit(sparse)(states["sparse"], batch)
    for name in ("grad_norm", "param_norm"):
      if step in (3, 5, 6):
        assert float(m_sparse[name]) == pytest.approx(float(m_every[name]), rel=1e-6), (step, name)
      else:
        assert np.isnan(float(m_sparse[name])), (step, name)
    assert float(m_sparse["loss"]) == pytest.approx(float(m_every["loss"]), rel=1e-6)
  with pytest.raises(ValueError, match="norms_every"):
    make_update_fn(NoisyRegression(), optimizer, norms_every=0)


def test_dit_denoising_steps_equal_on_one_and_eight_devices():
  """The real objective (timesteps, noise, label drops drawn for the global batch) on a micro DiT."""
  import jdpm
  from jdpm import diffusion
  from jdpm.training.objectives import DenoisingObjective

  model = jdpm.models.create("DiT", hidden_size=32, depth=1, num_heads=2, patch_size=8, input_size=16,
                             in_channels=3, num_classes=4)
  objective = DenoisingObjective(model=model, diffusion=diffusion.create_diffusion(""), min_snr_gamma=5.0)
  rs = np.random.RandomState(0)
  batches = [{"image": rs.uniform(-1, 1, (16, 16, 16, 3)).astype(np.float32),
              "label": rs.randint(0, 4, (16,)).astype(np.int32)} for _ in range(5)]
  params = model.init(jax.random.key(0), batches[0]["image"][:1], jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
  params = jax.tree.map(lambda a: a + 0.01, params["params"])  # leave the adaLN-Zero point

  def run(mesh, fsdp_min):
    # eps 1e-3 keeps Adam's step linear in small gradients: with the default 1e-8 a near-zero gradient
    # becomes a sign-like full step, so float summation-order noise moves a parameter by a fraction of lr.
    optimizer = optax.adamw(1e-3, eps=1e-3)
    update = make_update_fn(objective, optimizer, ema_decay=0.99)
    fresh = jax.tree.map(jnp.copy, params)  # the step donates its state
    state = create_train_state(fresh, optimizer, jax.random.key(1), extra=objective.init_extra())
    shardings = jax.tree.map(lambda a: parallel.param_sharding(a.shape, mesh, fsdp_min), state)
    step = jit_update_fn(update, shardings, parallel.batch_sharding(mesh), parallel.replicated(mesh))
    state = jax.device_put(state, shardings)
    losses = []
    for batch in batches:
      state, metrics = step(state, jax.device_put(batch, parallel.batch_sharding(mesh)))
      losses.append(float(metrics["loss"]))
    return jax.device_get(state.params), np.array(losses)

  one, one_losses = run(parallel.make_mesh(devices=jax.devices()[:1]), 2**18)
  for fsdp in (1, 2):
    many, many_losses = run(parallel.make_mesh(fsdp=fsdp), 0)
    np.testing.assert_allclose(many_losses, one_losses, rtol=2e-5)
    # A layout bug moves parameters by whole steps (~lr = 1e-3); summation-order noise by far less.
    for a, b in zip(jax.tree.leaves(many), jax.tree.leaves(one)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)


def test_min_snr_offset_needs_min_snr_and_a_bounded_target():
  import jdpm
  from jdpm import diffusion
  from jdpm.training.objectives import DenoisingObjective

  model = jdpm.models.create("DiT", hidden_size=32, depth=1, num_heads=2, patch_size=8, input_size=16,
                             in_channels=3, num_classes=4)
  v = diffusion.create_diffusion("", predict_v=True)
  assert DenoisingObjective(model=model, diffusion=v, min_snr_gamma=5.0, min_snr_offset=1.0).min_snr_offset == 1
  with pytest.raises(ValueError, match="Min-SNR is off"):
    DenoisingObjective(model=model, diffusion=v, min_snr_offset=1.0)
  with pytest.raises(ValueError, match="prediction='v' or 'x0'"):
    DenoisingObjective(model=model, diffusion=diffusion.create_diffusion(""), min_snr_gamma=5.0, min_snr_offset=1.0)


def test_logit_normal_timesteps_from_the_config():
  from configs import dit as dit_config
  from jdpm.diffusion import LogitNormalSampler
  from jdpm.training import objectives, run as run_lib

  config = dit_config.get_config("tiny")
  config.diffusion.timestep_sampler = "logit-normal"
  config.diffusion.timestep_logit_normal = [-0.5, 0.7]  # a list, as a run's config.json stores it
  objective = objectives.create(config, run_lib.create_model(config))
  assert objective.sampler == LogitNormalSampler(1000, -0.5, 0.7)


def test_cpu_devices_divide_the_batch_one_per_core_at_most():
  assert parallel.cpu_devices_for(8, cores=2) == 2
  assert parallel.cpu_devices_for(8, cores=16) == 8
  assert parallel.cpu_devices_for(12, cores=8) == 6
  assert parallel.cpu_devices_for(7, cores=2) == 1  # an odd batch stays on one device
  assert parallel.cpu_devices_for(0, cores=4) == 1  # invalid batches are left to the trainer's message


def test_cpu_device_count_is_left_alone_once_jax_has_started():
  jax.devices()
  before = jax.device_count()
  assert not parallel.use_cpu_devices(3)
  assert jax.device_count() == before
