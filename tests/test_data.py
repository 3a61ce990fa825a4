"""jdpm.data: builders (shapes, digits, imagenet from a fake tar, latents) and the Grain training pipeline."""

import io
import sys
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from jdpm import data
from jdpm.data import digits, imagenet, shapes


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A data dir with "shapes/tiny" (500 train, 100 test) built."""
  path = tmp_path_factory.mktemp("tfds")
  data.get_builder("shapes/tiny", data_dir=path)
  return path


# ---------------------------------------------------------------------------------------------- shapes


def test_shapes_examples_depend_only_on_seed_split_index(data_dir):
  images, labels = shapes.generate("train", [3, 7, 499])
  again, _ = shapes.generate("train", [499, 7])
  np.testing.assert_array_equal(images[[2, 1]], again)
  np.testing.assert_array_equal(labels, [3, 7, 9])
  assert images.dtype == np.uint8 and images.shape == (3, 32, 32, 3)
  # The stored records are exactly these examples, in index order.
  source = data.data_source("shapes/tiny", "train", data_dir=data_dir)
  for row, index in enumerate([3, 7, 499]):
    np.testing.assert_array_equal(source[index]["image"], images[row])
    assert source[index]["label"] == labels[row]
  # Another split or seed gives other images.
  assert not np.array_equal(shapes.generate("test", [3])[0], images[:1])
  assert not np.array_equal(shapes.generate("train", [3], seed=1)[0], images[:1])
  assert "tensorflow" not in sys.modules


def test_shapes_classes_are_balanced_and_coloured(data_dir):
  source = data.data_source("shapes/tiny", "train", data_dir=data_dir)
  records = source.__getitems__(list(range(len(source))))
  labels = np.array([r["label"] for r in records])
  assert len(labels) == 500
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, 50))
  # The most saturated pixel is red for even classes and blue for odd ones.
  images = np.stack([r["image"] for r in records]).astype(int)
  red_minus_blue = (images[..., 0] - images[..., 2]).reshape(500, -1)
  extreme = red_minus_blue[np.arange(500), np.abs(red_minus_blue).argmax(axis=1)]
  np.testing.assert_array_equal(extreme > 0, labels % 2 == 0)
  assert data.dataset_info("shapes/tiny", data_dir=data_dir).splits == {"train": 500, "test": 100}


def _render_one(label, center, radius, angle=0.0):
  params = shapes.ShapeParams(label=np.array([label]), center=np.array([center], float),
                              radius=np.array([radius], float), angle=np.array([angle]),
                              foreground=np.array([[255.0, 255, 255]]), background=np.zeros((1, 3)))
  return shapes.render(params)[0, ..., 0] / 255.0  # coverage per pixel


def test_shapes_rendering_areas():
  # Square (label 2) of half-side 0.8 r = 8 px at (16, 16): exactly pixels 8..23.
  square = _render_one(2, (16, 16), 10.0)
  expected = np.zeros((32, 32))
  expected[8:24, 8:24] = 1
  np.testing.assert_array_equal(square, expected)
  # Circle (label 0): area pi r^2 up to the 4x4 supersampling error.
  assert abs(_render_one(0, (15.3, 16.6), 9.0).sum() - np.pi * 81) < 0.01 * np.pi * 81
  # Ring (label 8): pi r^2 (1 - 0.55^2); rotation changes nothing.
  ring_area = np.pi * 81 * (1 - 0.55**2)
  assert abs(_render_one(8, (16, 16), 9.0, angle=1.0).sum() - ring_area) < 0.02 * ring_area
  # Equilateral triangle (label 4) with inradius 0.6 r: area 3 sqrt(3) (0.6 r)^2.
  triangle_area = 3 * np.sqrt(3) * (0.6 * 9) ** 2
  assert abs(_render_one(4, (16, 16), 9.0, angle=0.3).sum() - triangle_area) < 0.02 * triangle_area


# ---------------------------------------------------------------------------------------------- digits


def test_digits_are_sklearn_digits_upsampled(tmp_path):
  from sklearn.datasets import load_digits

  sk = load_digits()
  source = {split: data.data_source("digits", split, data_dir=tmp_path) for split in ("train", "test")}
  assert (len(source["train"]), len(source["test"])) == (1500, 297)
  for split, index in [("train", 0), ("train", 1234), ("test", 0), ("test", 296)]:
    sk_index = index + (0 if split == "train" else 1500)
    record = source[split][index]
    pil = PIL.Image.fromarray(sk.images[sk_index].astype(np.float32), "F").resize((32, 32), PIL.Image.BILINEAR)
    expected = np.round(np.asarray(pil, np.float64) * 255 / 16)
    assert record["image"].shape == (32, 32, 3) and record["image"].dtype == np.uint8
    np.testing.assert_array_equal(record["image"][..., 0], record["image"][..., 2])
    # PIL computes in float32: rounding may differ at exact .5 ties only.
    assert np.abs(record["image"][..., 1].astype(float) - expected).max() <= 1
    assert np.mean(record["image"][..., 1] == expected) > 0.99
    assert record["label"] == sk.target[sk_index]


def test_bilinear_upsampling_matches_pil():
  images = np.random.default_rng(0).uniform(0, 16, (3, 8, 8)).astype(np.float32)
  ours = digits.upsample_bilinear(images.astype(np.float64), 32)
  pil = np.stack([np.asarray(PIL.Image.fromarray(x, "F").resize((32, 32), PIL.Image.BILINEAR)) for x in images])
  np.testing.assert_allclose(ours, pil, atol=1e-4)


# -------------------------------------------------------------------------------------------- imagenet


def _jpeg(rng, width, height, mode="RGB"):
  image = PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=90)
  return buffer.getvalue()


def _add(tar, name, payload):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def _fake_imagenet(manual_dir):
  """Writes tiny ILSVRC2012 train/val tars; returns {file name: (jpeg bytes, class index)}."""
  rng = np.random.default_rng(0)
  manual_dir.mkdir(parents=True, exist_ok=True)
  expected = {}
  with tarfile.open(manual_dir / imagenet.TRAIN_TAR, "w") as outer:
    # Class 0 and class 1 of the sorted WordNet ids, one tar each, as in the real file.
    for wnid, label, sizes in [("n01440764", 0, [(600, 530), (300, 280)]),
                               ("n01443537", 1, [(257, 400), (1100, 1030)])]:
      inner_bytes = io.BytesIO()
      with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
        for k, (w, h) in enumerate(sizes):
          name = f"{wnid}_{k}.JPEG"
          expected[name] = (_jpeg(rng, w, h, "L" if k == 1 else "RGB"), label)
          _add(inner, name, expected[name][0])
      _add(outer, f"{wnid}.tar", inner_bytes.getvalue())
  with tarfile.open(manual_dir / imagenet.VAL_TAR, "w") as tar:
    # The first three validation images are of classes 65, 970 and 230.
    for number, label, (w, h) in [(1, 65, (500, 375)), (2, 970, (333, 500)), (3, 230, (256, 256))]:
      name = f"ILSVRC2012_val_{number:08d}.JPEG"
      expected[name] = (_jpeg(rng, w, h), label)
      _add(tar, name, expected[name][0])
  return expected


def _adm_crop_reference(jpeg, size):
  """guided-diffusion's centre crop, written out with PIL calls."""
  image = PIL.Image.open(io.BytesIO(jpeg)).convert("RGB")
  while min(image.size) >= 2 * size:
    image = image.resize((image.size[0] // 2, image.size[1] // 2), resample=PIL.Image.BOX)
  scale = size / min(image.size)
  image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), resample=PIL.Image.BICUBIC)
  array = np.array(image)
  top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
  return array[top:top + size, left:left + size]


def test_imagenet_from_fake_tars_applies_adm_center_crop(tmp_path):
  expected = _fake_imagenet(tmp_path / "manual")
  builder = data.get_builder("imagenet2012", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "manual",
                             num_workers=1)
  assert dict(builder.info.splits.items())["train"].num_examples == 4
  seen = set()
  for split in ("train", "validation"):
    source = builder.as_data_source(split=split)
    for record in source.__getitems__(list(range(len(source)))):
      name = record["file_name"].decode()  # TFDS Text features read back as bytes
      jpeg, label = expected[name]
      assert record["image"].shape == (256, 256, 3) and record["image"].dtype == np.uint8
      np.testing.assert_array_equal(record["image"], _adm_crop_reference(jpeg, 256))
      assert record["label"] == label
      seen.add(name)
  assert seen == set(expected)
  info = data.dataset_info("imagenet2012/res64", data_dir=tmp_path / "tfds")
  assert (info.image_shape, info.num_classes) == ((64, 64, 3), 1000)


def test_imagenet_missing_manual_files_is_one_clear_error(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / imagenet.VAL_TAR).write_bytes(b"")
  with pytest.raises(FileNotFoundError) as error:
    data.get_builder("imagenet2012", data_dir=tmp_path, manual_dir=manual)
  message = str(error.value)
  assert str(manual) in message and imagenet.TRAIN_TAR in message and imagenet.VAL_TAR in message
  assert "missing there" in message and "\n" not in message
  # Default manual dir: <data_dir>/downloads/manual.
  with pytest.raises(FileNotFoundError, match="downloads/manual"):
    data.get_builder("imagenet2012/res64", data_dir=tmp_path)


# -------------------------------------------------------------------------------------------- pipeline


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_train_batches_values_and_flips(data_dir):
  source = data.data_source("shapes/tiny", "train", data_dir=data_dir)
  kwargs = dict(seed=3, data_dir=data_dir, process_index=0, process_count=1)
  flipped_count = 0
  for random_flip in (False, True):
    batches = _take(data.make_train_iterator("shapes/tiny", "train", 50, random_flip=random_flip, **kwargs), 10)
    assert batches[0]["image"].dtype == np.float32 and batches[0]["image"].shape == (50, 32, 32, 3)
    assert batches[0]["label"].dtype == np.int32
    # Ten batches of 50 are one epoch of the 500 examples.
    np.testing.assert_array_equal(np.sort(np.concatenate([b["index"] for b in batches])), np.arange(500))
    for batch in batches:
      for image, label, index in zip(batch["image"], batch["label"], batch["index"]):
        original = source[int(index)]["image"].astype(np.float32) / 127.5 - 1
        assert label == source[int(index)]["label"]
        same = np.allclose(image, original, rtol=0, atol=1e-6)
        mirrored = np.allclose(image, original[:, ::-1], rtol=0, atol=1e-6) and not same
        assert mirrored or same
        assert random_flip or not mirrored
        flipped_count += mirrored
  assert 200 < flipped_count < 300  # about half of 500
  assert batches[0]["image"].min() >= -1 and batches[0]["image"].max() <= 1


def test_train_iterator_is_deterministic_and_restores_exactly(data_dir):
  kwargs = dict(seed=7, data_dir=data_dir, process_index=0, process_count=1)
  iterator = data.make_train_iterator("shapes/tiny", "train", 64, **kwargs)
  first = _take(iterator, 9)  # crosses an epoch boundary (500 / 64 = 7.8 batches)
  state = iterator.get_state()
  after = _take(iterator, 4)
  # Same seed: same stream; another seed: another order.
  again = _take(data.make_train_iterator("shapes/tiny", "train", 64, **kwargs), 9)
  for x, y in zip(first, again):
    np.testing.assert_array_equal(x["image"], y["image"])
  other = next(data.make_train_iterator("shapes/tiny", "train", 64, **{**kwargs, "seed": 8}))
  assert not np.array_equal(other["index"], first[0]["index"])
  # Restoring the saved state into a fresh iterator resumes with exactly the same batches.
  resumed = data.make_train_iterator("shapes/tiny", "train", 64, **kwargs)
  resumed.set_state(state)
  for x, y in zip(after, _take(resumed, 4)):
    for key in ("image", "label", "index"):
      np.testing.assert_array_equal(x[key], y[key])
  # The second epoch is shuffled differently from the first.
  assert not np.array_equal(first[8]["index"], first[0]["index"])


def test_hosts_get_disjoint_slices_of_the_global_stream(data_dir):
  def host(index, count, global_batch):
    return _take(data.make_train_iterator("shapes/tiny", "train", global_batch, seed=5, data_dir=data_dir,
                                          process_index=index, process_count=count, num_epochs=1), 500 // global_batch)

  host0, host1 = host(0, 2, 20), host(1, 2, 20)
  indices0 = np.concatenate([b["index"] for b in host0])
  indices1 = np.concatenate([b["index"] for b in host1])
  assert len(indices0) == len(indices1) == 250 and not set(indices0) & set(indices1)
  np.testing.assert_array_equal(np.sort(np.concatenate([indices0, indices1])), np.arange(500))
  # Together the hosts' batch j is the single-host batch j, with the same flips.
  single = host(0, 1, 20)
  for b0, b1, b in zip(host0, host1, single):
    two_hosts = {int(i): x for part in (b0, b1) for i, x in zip(part["index"], part["image"])}
    assert set(two_hosts) == set(b["index"].tolist())
    for i, x in zip(b["index"], b["image"]):
      np.testing.assert_array_equal(two_hosts[int(i)], x)
  one_epoch = data.make_train_iterator("shapes/tiny", "test", 100, seed=0, data_dir=data_dir, process_index=0,
                                      process_count=1, num_epochs=1)
  next(one_epoch)
  with pytest.raises(StopIteration):  # num_epochs=1: the 100 test examples make one batch
    next(one_epoch)


def test_errors_and_dataset_info(data_dir):
  with pytest.raises(ValueError) as error:
    data.make_train_iterator("cifar11", "train", 8, seed=0, data_dir=data_dir, process_index=0, process_count=1)
  assert "shapes" in str(error.value) and "digits" in str(error.value) and "\n" not in str(error.value)
  with pytest.raises(ValueError, match="multiple of the process count 2"):
    data.make_train_iterator("shapes/tiny", "train", 7, seed=0, data_dir=data_dir, process_index=0, process_count=2)
  with pytest.raises(ValueError, match="no split 'validation'"):
    data.data_source("shapes/tiny", "validation", data_dir=data_dir)
  info = data.dataset_info("shapes", data_dir=data_dir)  # not built: known without building
  assert (info.image_shape, info.num_classes, info.is_latent) == ((32, 32, 3), 10, False)
  assert info.splits == {"train": 20_000, "test": 2_000}
  assert data.dataset_info("digits", data_dir=data_dir).image_shape == (32, 32, 3)


def test_data_dir_defaults_to_environment_variable(data_dir, monkeypatch):
  monkeypatch.setenv(data.DATA_DIR_ENV, str(data_dir))
  assert data.resolve_data_dir() == str(data_dir)
  # "shapes/tiny" is found already built there.
  assert data.dataset_info("shapes/tiny").splits == {"train": 500, "test": 100}
  assert len(data.data_source("shapes/tiny", "test")) == 100


def test_eval_iterator_is_ordered_per_host(data_dir):
  batches = list(data.make_eval_iterator("shapes/tiny", "test", 64, data_dir=data_dir, process_index=1,
                                         process_count=2))
  np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), np.arange(1, 100, 2))
  assert [len(b["index"]) for b in batches] == [32, 18]


# --------------------------------------------------------------------------------------------- latents

_MIX = np.array([[0.5, -1.0, 0.25, 2.0], [1.5, 0.5, -0.75, 0.0], [-0.25, 1.0, 1.0, -2.0]], np.float32)


_SEEN_SHARDINGS = []


def _encode(images):
  """A fixed linear encoder: 2x2 average pooling, then a 3 -> 4 channel mix."""
  jax.debug.inspect_array_sharding(images, callback=_SEEN_SHARDINGS.append)
  b, h, w, c = images.shape
  pooled = images.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
  return pooled @ jnp.asarray(_MIX) + 0.1


def _encode_numpy(images_uint8):
  x = images_uint8.astype(np.float64) / 127.5 - 1
  pooled = x.reshape(-1, 16, 2, 16, 2, 3).mean(axis=(2, 4))
  return pooled @ _MIX.astype(np.float64) + 0.1


def test_latent_dataset_holds_the_encoder_outputs(data_dir):
  assert len(jax.devices()) == 8
  info = data.build_latent_dataset(_encode, "shapes/tiny", out_name="shapes_tiny_linear", data_dir=data_dir,
                                   batch_size=16, splits=["test"])
  assert (info.image_shape, info.num_classes, info.is_latent, info.splits) == ((16, 16, 4), 10, True,
                                                                                {"test": 100})
  # The encoder saw the batch of 16 split over the 8 devices, 2 images each.
  assert _SEEN_SHARDINGS and _SEEN_SHARDINGS[-1].num_devices == 8
  assert _SEEN_SHARDINGS[-1].shard_shape((16, 32, 32, 3)) == (2, 32, 32, 3)
  images = data.data_source("shapes/tiny", "test", data_dir=data_dir)
  latents = data.data_source("shapes_tiny_linear", "test", data_dir=data_dir)
  assert len(latents) == 100  # 6 full batches of 16 and a padded one
  for index in (0, 37, 99):
    record = latents[index]
    assert record["latent"].dtype == np.float32 and record["label"] == images[index]["label"]
    np.testing.assert_allclose(record["latent"], _encode_numpy(images[index]["image"][None])[0], atol=2e-6)
  # The training pipeline reads it by name: float32 latents, unscaled, mirrored by random_flip.
  batch = next(data.make_train_iterator("shapes_tiny_linear", "test", 20, seed=0, data_dir=data_dir,
                                        process_index=0, process_count=1))
  for latent, index in zip(batch["image"], batch["index"]):
    stored = latents[int(index)]["latent"]
    assert np.array_equal(latent, stored) or np.array_equal(latent, stored[:, ::-1])


def test_latent_dataset_float16_with_stored_flips(data_dir):
  data.build_latent_dataset(_encode, "shapes/tiny", out_name="shapes_tiny_flips", data_dir=data_dir,
                            batch_size=32, splits=["test"], latent_dtype=np.float16, with_flips=True)
  images = data.data_source("shapes/tiny", "test", data_dir=data_dir)
  latents = data.data_source("shapes_tiny_flips", "test", data_dir=data_dir)
  record = latents[42]
  assert record["latent"].dtype == np.float16
  image = images[42]["image"]
  np.testing.assert_allclose(record["latent"], _encode_numpy(image[None])[0], rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(record["latent_flip"], _encode_numpy(image[None, :, ::-1])[0], rtol=1e-3, atol=1e-3)
  batch = next(data.make_train_iterator("shapes_tiny_flips", "test", 50, seed=0, data_dir=data_dir,
                                        process_index=0, process_count=1))
  picks = []
  for latent, index in zip(batch["image"], batch["index"]):
    stored = latents[int(index)]
    picks.append(np.array_equal(latent, stored["latent_flip"].astype(np.float32)))
    assert picks[-1] or np.array_equal(latent, stored["latent"].astype(np.float32))
  assert 10 < sum(picks) < 40
  with pytest.raises(ValueError, match="not a built-in dataset name"):
    data.build_latent_dataset(_encode, "shapes/tiny", out_name="shapes", data_dir=data_dir, batch_size=16)


def test_tensorflow_was_never_imported():
  assert "tensorflow" not in sys.modules
