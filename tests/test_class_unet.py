"""The class-conditional pixel UNet behind `configs/unet.py`: the denoiser fields the trainer and samplers
read, its output channels, that the label (and the null class) changes the output, and that its config
survives the trip through config.json (tuples come back as lists; Flax modules must be hashable)."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import jdpm
from configs import unet as unet_configs
from jdpm.models import class_unet, layers
from jdpm.training import run


def _small(**kw):
  return jdpm.models.create("ClassUNet", block_out_channels=(8, 16), layers_per_block=1,
                            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                            up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
                            norm_num_groups=4, input_size=8, **kw)


def test_denoiser_fields_and_label_dependence():
  model = _small(num_classes=3)
  assert model.null_condition == 3 and model.sample_shape == (8, 8, 3)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  t = jnp.array([1.0, 100.0, 500.0, 999.0])
  variables = jax.jit(model.init)(jax.random.key(1), x, t, jnp.zeros((4,), jnp.int32))
  apply = jax.jit(model.apply)  # one compilation for the three labels
  # The class table starts random (nn.Embed), so labels 0, 1 and the null class 3 differ from the start.
  out = {y: np.asarray(apply(variables, x, t, jnp.full((4,), y))) for y in (0, 1, 3)}
  assert out[0].shape == (4, 8, 8, 3)
  assert not np.allclose(out[0], out[1]) and not np.allclose(out[0], out[3])
  sigma = _small(num_classes=3, learn_sigma=True)  # shapes only: no second compilation
  abstract = jax.eval_shape(sigma.init, jax.random.key(1), x, t, jnp.zeros((4,), jnp.int32))
  assert jax.eval_shape(sigma.apply, abstract, x, t, jnp.zeros((4,), jnp.int32)).shape == (4, 8, 8, 6)


def test_config_survives_config_json():
  config = unet_configs.get_config("tiny")
  reread = ml_collections.ConfigDict(json.loads(config.to_json()))
  assert isinstance(reread.model.block_out_channels, list)
  model = run.create_model(reread)
  assert model.block_out_channels == (32, 64, 64)
  hash(model)


def test_tiny_long_is_the_tiny_recipe_over_28000_steps_at_guidance_2_5():
  short, long = unet_configs.get_config("tiny"), unet_configs.get_config("tiny_long")
  # Measured so (BENCHMARKS.md, "First-run quality", parts 11 and 13).
  assert (long.total_steps, long.optimizer.decay_steps, long.sample.cfg_scale) == (28_000, 28_000, 2.5)
  long.total_steps, long.optimizer.decay_steps = short.total_steps, short.optimizer.decay_steps
  long.sample.cfg_scale = short.sample.cfg_scale
  assert long.to_dict() == short.to_dict()
  with pytest.raises(ValueError, match="tiny or tiny_long"):
    unet_configs.get_config("S")


def test_space_to_depth_is_what_unpatchify_undoes():
  x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
  folded = class_unet.space_to_depth(x, 2)
  assert folded.shape == (2, 2, 3, 12)
  # Position (0, 1) holds the block of rows 0-1, columns 2-3, ordered (row, column, channel).
  np.testing.assert_array_equal(folded[1, 0, 1], np.concatenate([x[1, 0, 2], x[1, 0, 3], x[1, 1, 2], x[1, 1, 3]]))
  tokens = class_unet.space_to_depth(x[:, :, :4], 2).reshape(2, 4, 12)  # unpatchify needs a square grid
  np.testing.assert_array_equal(layers.unpatchify(tokens, 2, 3), x[:, :, :4])


@pytest.mark.parametrize("options", [dict(space_to_depth=2), dict(resnet_time_scale_shift="scale_shift")])
def test_options_keep_the_denoiser_shapes(options):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  t, y = jnp.array([10.0, 900.0]), jnp.array([0, 3])
  for learn_sigma, channels in ((False, 3), (True, 6)):
    model = _small(num_classes=3, learn_sigma=learn_sigma, **options)
    abstract = jax.eval_shape(model.init, jax.random.key(1), x, t, y)
    assert jax.eval_shape(model.apply, abstract, x, t, y).shape == (2, 8, 8, channels)
  if "space_to_depth" in options:  # the UNet sees 4x4 positions of 12 channels
    assert abstract["params"]["unet"]["conv_in"]["kernel"].shape[-2:] == (12, 8)


def test_space_to_depth_must_divide_the_image():
  model = _small(num_classes=3, space_to_depth=3)
  x = jnp.zeros((1, 8, 8, 3))
  with pytest.raises(ValueError, match="must divide"):
    jax.eval_shape(model.init, jax.random.key(1), x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
