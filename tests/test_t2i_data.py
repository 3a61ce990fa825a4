"""The built-in text-to-image data: captioned scenes whose canonical labels agree with what is drawn, the
word tokenizer with CLIP's layout and its error messages, and bad pipeline folders (one clear message; a copy of
tests/data/diffusers_tiny, made by tools/make_diffusers_reference.py)."""

import json
import shutil

import numpy as np
import pytest

from jdpm import pipelines
from jdpm.data import captioned_shapes as cs
from jdpm.t2i.tokenizer import WordTokenizer


def test_scenes_are_deterministic_and_labels_match_the_drawing():
  images, captions, labels = cs.generate(64, seed=3)
  again, captions2, _ = cs.generate(64, seed=3)
  assert np.array_equal(images, again) and captions == captions2
  assert images.shape == (64, 16, 16, 3) and images.dtype == np.uint8
  scene_list = cs.scenes(np.arange(64), seed=3)
  for i, scene in enumerate(scene_list):
    objects = scene.objects
    # Slot 0 is the single object, or the left / top one; its colour is the drawn colour there.
    if len(objects) == 2:
      axis = 0 if labels["layout"][i] == 1 else 1
      objects = sorted(objects, key=lambda o: o[3][axis])
    for slot, (shape, colour, _, centre, _) in enumerate(objects):
      assert cs.HEADS[f"shape{slot}"][labels[f"shape{slot}"][i]] == shape
      assert cs.HEADS[f"colour{slot}"][labels[f"colour{slot}"][i]] == colour
      x, y = int(centre[0]), int(centre[1])
      pixel = images[i, y, x].astype(int)
      if shape != "ring":  # a ring's centre is background
        assert np.abs(pixel - cs.COLOURS[colour]).max() < 60, (scene.caption, pixel)
  kinds = np.bincount(labels["layout"], minlength=3)
  assert kinds.min() > 5  # single, horizontal and vertical scenes all occur


def test_caption_grammar():
  assert cs.labels_from_caption("a red ring left of a blue square") == cs.labels_from_caption(
      "a blue square right of a red ring")
  single = cs.labels_from_caption("a small green triangle")
  assert single["layout"] == 0 and cs.HEADS["shape1"][single["shape1"]] == "none"
  for bad in ("a purple square", "two red rings", "a red ring near a blue square"):
    with pytest.raises(ValueError, match="grammar"):
      cs.labels_from_caption(bad)


def test_tokenizer_layout_and_errors():
  tok = WordTokenizer(cs.WORDS, 8)
  ids = tok.encode(["a big red square", "a red ring"])
  assert ids.shape == (2, 8) and ids.dtype == np.int32
  assert tok.decode(ids[0]) == ["<|startoftext|>", "a", "big", "red", "square"] + ["<|endoftext|>"] * 3
  np.testing.assert_array_equal(tok.eos_positions(ids)[1], [0, 0, 0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(tok.empty_ids(2)[:, :2], [[0, 1], [0, 1]])
  with pytest.raises(ValueError, match="empty"):
    tok.encode(["a red ring", "  "])
  with pytest.raises(ValueError, match="at most 6"):
    tok.encode("a red ring left of a blue square")
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tok.encode("a purple ring")


def test_pipeline_folder_without_text_encoder(tmp_path, data_dir):
  folder = tmp_path / "pipeline"
  shutil.copytree(data_dir / "diffusers_tiny" / "pipeline", folder)
  shutil.rmtree(folder / "text_encoder")
  with pytest.raises(ValueError, match="text_encoder"):
    pipelines.load_pipeline(folder)
  index = json.loads((folder / "model_index.json").read_text())
  del index["text_encoder"]
  (folder / "model_index.json").write_text(json.dumps(index))
  with pytest.raises(ValueError, match=r"lacks the component\(s\) \['text_encoder'\]"):
    pipelines.load_pipeline(folder)


def test_prompt_checks():
  count = lambda p: len(p.split()) + 2
  pipelines.text_to_image_lib.check_prompts(["a cat"], count, 4)
  with pytest.raises(ValueError, match="empty"):
    pipelines.text_to_image_lib.check_prompts([""], count, 4)
  with pytest.raises(ValueError, match="more than the text encoder's context of 4"):
    pipelines.text_to_image_lib.check_prompts(["a very big cat"], count, 4)
