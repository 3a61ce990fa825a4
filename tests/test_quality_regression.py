"""A cheap guard on the quick-start recipe's learning speed: a short run must denoise as well as it did.

The README's main job trains `RECIPE` for minutes; a change that slows its learning (an optimizer default, a
loss weighting, an initialisation, the data pipeline) would show only as worse samples at its end. This test
runs the recipe's first `STEPS` steps (its own model, optimizer, objective and data, a smaller batch) and
measures the denoised-image error on held-out test images at five fixed noise levels with fixed noise. The
bound is the value measured when the recipe was tuned, with a margin for other library versions; the
untrained model's error is measured too, so the test also says how much of the way the run went.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jdpm import data as data_lib
from jdpm.training import optimizers
from jdpm.training import trainer as trainer_lib
from jdpm.training.step import make_update_fn

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPE = "configs/dit.py:tiny"  # the README's main job, relative to the repository root
STEPS = 200
BATCH = 8
EVAL_TIMESTEPS = (100, 300, 500, 700, 900)  # of the 1000-step training process
# Measured (jax 0.10.2, CPU): untrained 0.237, after STEPS steps 0.107 with the recipe's Min-SNR offset 1
# (0.124 without it, 0.130 without it at the rate 1e-3), 0.106 with the recipe's label dropout 0.05 instead of
# 0.1; the bound leaves a 15-18% margin over those.
# Two regressions, measured the same way over 300 steps: the same run with eps-prediction (the x0 estimate at
# high noise is then 1/alpha times the noise error) ends at 4.2; batch 32 instead of 8 (4x the images) at
# 0.096, so the error tracks how much the run learned, not a lucky seed.
MAX_ERROR = 0.125


def denoising_error(objective, params, images, labels):
  """Mean over EVAL_TIMESTEPS of the mean squared error of the x0 prediction, on fixed noise (a float)."""
  diffusion = objective.diffusion
  noise = jax.random.normal(jax.random.key(123), images.shape)
  errors = []
  for t_value in EVAL_TIMESTEPS:
    t = jnp.full(images.shape[:1], t_value, jnp.int32)
    x_t = diffusion.q_sample(images, t, noise)
    output = objective.model.apply({"params": params}, x_t, diffusion.model_timesteps(t), labels)
    x0 = diffusion.p_mean_variance_from_output(output, x_t, t)["pred_xstart"]
    errors.append(float(jnp.mean(jnp.square(x0 - images))))
  return float(np.mean(errors))


def test_quick_start_recipe_learns_as_fast_as_measured(tmp_path):
  config = trainer_lib.load_config(str(ROOT / RECIPE))
  info = data_lib.dataset_info(config.data.name, data_dir=tmp_path)
  model = trainer_lib.create_model(config)
  objective = trainer_lib.make_objective(config, model)
  optimizer = optimizers.make_optimizer(config.optimizer)
  state, _ = jax.jit(trainer_lib.make_init_fn(objective, optimizer, info))(jax.random.key(config.seed))
  untrained = jax.device_get(state.params)
  update = jax.jit(make_update_fn(objective, optimizer, ema_decay=config.ema_decay,
                                  ema_warmup=config.ema_warmup), donate_argnums=0)
  batches = data_lib.make_train_iterator(config.data.name, "train", BATCH, seed=0, data_dir=tmp_path,
                                         process_index=0, process_count=1)
  for _ in range(STEPS):
    batch = next(batches)
    batch.pop("index")
    state, _ = update(state, batch)

  test = next(data_lib.make_eval_iterator(config.data.name, "test", 64, data_dir=tmp_path))
  images, labels = jnp.asarray(test["image"]), jnp.asarray(test["label"])
  before = denoising_error(objective, untrained, images, labels)
  after = denoising_error(objective, state.ema_params, images, labels)
  print(f"denoising error of {RECIPE}: untrained {before:.4f}, after {STEPS} steps {after:.4f}")
  assert after < MAX_ERROR, (before, after)
  assert after < 0.6 * before
