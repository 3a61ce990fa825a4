"""jdpm.pipelines.text_to_image end to end on the tiny random pipeline folder of
tests/data/diffusers_tiny (tools/make_diffusers_reference.py): shapes, determinism under a seed,
guidance scale 1 = conditional only, the guidance window, and the number of network evaluations."""

import jax
import numpy as np
import pytest

from jdpm import pipelines

STEPS = 4


def max_relative_error(actual, expected):
  return float(np.max(np.abs(np.asarray(actual) - np.asarray(expected))) / np.max(np.abs(expected)))


@pytest.fixture(scope="module")
def pipe(data_dir):
  return pipelines.load_pipeline(data_dir / "diffusers_tiny" / "pipeline")


@pytest.fixture(scope="module")
def ids(data_dir):
  with np.load(data_dir / "diffusers_tiny" / "reference.npz") as ref:
    return ref["input_ids"]


@pytest.fixture(scope="module")
def conditional(pipe, ids):
  return pipelines.text_to_image(pipe, input_ids=ids, steps=STEPS, guidance_scale=None, seed=1)


def test_pipeline_reads_the_folder(pipe, ids):
  assert pipe.schedule.total_n == 1000 and pipe.model_type == "noise"
  assert pipe.image_size == (16, 16)
  np.testing.assert_array_equal(pipe.empty_prompt_ids()[0, :3], [ids[0, 0], ids[0, -1], ids[0, -1]])


def test_shapes_nfe_and_determinism(pipe, ids):
  run = lambda seed: pipelines.text_to_image(pipe, input_ids=ids, steps=STEPS, guidance_scale=5.0, seed=seed)
  a, b, c = run(0), run(0), run(1)
  assert a["images"].shape == (2, 16, 16, 3) and a["latents"].shape == (2, 8, 8, 4)
  assert a["nfe"] == STEPS
  assert np.isfinite(np.asarray(a["images"])).all()
  np.testing.assert_array_equal(a["images"], b["images"])
  assert not np.allclose(a["images"], c["images"])


def test_guidance_scale_one_is_the_conditional_model(pipe, ids, conditional):
  guided = pipelines.text_to_image(pipe, input_ids=ids, steps=STEPS, guidance_scale=1.0, seed=1)
  assert max_relative_error(guided["latents"], conditional["latents"]) < 1e-5


def test_guidance_window_and_network_calls(pipe, ids, conditional):
  rows = []

  def counting_apply(variables, x, t, context):
    jax.debug.callback(lambda n: rows.append(int(n)), x.shape[0])
    return pipe.unet.apply(variables, x, t, context)

  # Guided for the first half of the evaluations only: two doubled-batch calls, then two single ones.
  out = pipelines.text_to_image(pipe, input_ids=ids, steps=STEPS, guidance_scale=5.0,
                                guidance_window=(0.0, 0.5), seed=1, apply_fn=counting_apply)
  jax.block_until_ready(out["latents"])
  assert rows == [4, 4, 2, 2] and out["nfe"] == STEPS
  # An empty window never guides: the conditional model's result.
  never = pipelines.text_to_image(pipe, input_ids=ids, steps=STEPS, guidance_scale=5.0,
                                  guidance_window=(0.0, 0.0), seed=1)
  assert max_relative_error(never["latents"], conditional["latents"]) < 1e-5


def test_images_per_prompt_and_sharded_batch(pipe, ids):
  out = pipelines.text_to_image(pipe, input_ids=ids, num_images_per_prompt=2, steps=2, seed=0)
  assert out["images"].shape == (4, 16, 16, 3)
  assert np.isfinite(np.asarray(out["images"])).all()


def test_prompts_need_ids_or_tokenizer(pipe, ids):
  with pytest.raises(ValueError, match="prompts or input_ids"):
    pipelines.text_to_image(pipe, steps=STEPS)
  pytest.importorskip("transformers")
  from_prompts = pipelines.text_to_image(pipe, ["a photo of a cat", "a red dog on the grass"],
                                         steps=STEPS, guidance_scale=None, seed=1, decode=False)
  from_ids = pipelines.text_to_image(pipe, input_ids=ids, steps=STEPS, guidance_scale=None, seed=1,
                                     decode=False)
  np.testing.assert_array_equal(from_prompts["latents"], from_ids["latents"])
