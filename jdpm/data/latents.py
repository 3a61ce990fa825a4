"""Latent datasets: run an encoder over an image dataset once and store its outputs as a TFDS dataset.

`build_latent_dataset` feeds each split in fixed-size batches, split over all devices along the batch axis,
to `jax.jit(encode_fn)`, and writes float latents (float16 or float32) plus the labels to array_record files
under `data_dir/<out_name>/1.0.0/`. Record i of a split is the encoding of record i of the source split, so
the result is read back by name through `jdpm.data.data_source` and `make_train_iterator` like any dataset.
`vae_encode_fn` gives the `encode_fn` and `params` of a Stable Diffusion VAE (`jdpm.models.vae.AutoencoderKL`).
"""

import functools
import re
import shutil

import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding, PartitionSpec as P

from jdpm.data import registry, storage

_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
IMAGE_FORMATS = ("float", "uint8")


def vae_encode_fn(vae, variables):
  """`encode_fn` and `params` for `build_latent_dataset` from a VAE such as `jdpm.models.vae.AutoencoderKL`.

  Args:
    vae: an unbound module with `encode_latents(variables, images, rng=None)` whose encoding reads only
      the "encoder" and "quant_conv" parameters (the decoder's are left out of `params`).
    variables: its variables.
  Returns:
    (encode_fn, params): pass both, `build_latent_dataset(encode_fn, ..., params=params)`.
    `encode_fn(params, images, key=None)` maps float images (B, H, W, C) in [-1, 1] to `scaling_factor * z`,
    z a posterior sample drawn with `key` (build with `rng=...`, as DiT's feature extraction), or the
    posterior mean when built without `rng`. With `with_flips=True` the mirrored images get their own keys.
  """
  params = {"params": {k: v for k, v in variables["params"].items() if k in ("encoder", "quant_conv")}}

  def encode_fn(params, images, key=None):
    return vae.encode_latents(params, images, key)

  return encode_fn, params


def _replicate(tree, sharding):
  # Built from host copies on every process, so it also works when the mesh spans several hosts.
  def put(leaf):
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(put, tree)


def _mesh_and_shardings(mesh):
  if mesh is None:
    from jdpm.parallel import make_mesh  # the project's one mesh helper

    mesh = make_mesh()
  batch = NamedSharding(mesh, P(tuple(mesh.axis_names)))  # leading axis over every device
  return mesh, batch, NamedSharding(mesh, P())


def _to_encoder_input(images, image_format):
  if image_format == "float":
    return images.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)
  return images


def _encode_split(source, encode, batch_size, batch_sharding, image_format, with_flips, rng):
  """Yields (record index, latent, latent of the mirrored image or None, label) for every record, in order."""
  num_records = len(source)
  pending = None  # the previous batch's device results: dispatch the next batch before reading them back

  def results(item):
    start, count, labels, latents, flipped = item
    latents = np.asarray(latents)[:count]
    flipped = None if flipped is None else np.asarray(flipped)[:count]
    for row in range(count):
      yield start + row, latents[row], None if flipped is None else flipped[row], labels[row]

  for batch_index, start in enumerate(range(0, num_records, batch_size)):
    indices = list(range(start, min(start + batch_size, num_records)))
    records = source.__getitems__(indices)
    images = np.stack([r["image"] for r in records])
    labels = np.array([r["label"] for r in records], dtype=np.int64)
    count = len(indices)
    if count < batch_size:  # pad the last batch (repeating its last image) to keep one compiled shape
      images = np.concatenate([images, np.repeat(images[-1:], batch_size - count, axis=0)])
    keys = (None, None) if rng is None else (jax.random.fold_in(rng, 2 * batch_index),
                                              jax.random.fold_in(rng, 2 * batch_index + 1))

    def run(host_images, key):
      x = _to_encoder_input(host_images, image_format)
      # Every process holds the whole batch; each device takes its rows, whatever the mesh's device order.
      x = jax.make_array_from_callback(x.shape, batch_sharding, lambda index: x[index])
      return encode(x) if key is None else encode(x, key)

    latents = run(images, keys[0])
    flipped = run(np.ascontiguousarray(images[:, :, ::-1]), keys[1]) if with_flips else None
    if pending is not None:
      yield from results(pending)
    pending = (start, count, labels, latents, flipped)
  if pending is not None:
    yield from results(pending)


def build_latent_dataset(encode_fn, source_dataset_name: str, *, out_name: str, data_dir=None,
                         batch_size: int = 256, source_data_dir=None, splits=None,
                         latent_dtype=np.float32, image_format: str = "float", with_flips: bool = False,
                         rng=None, params=None, mesh=None, overwrite: bool = False) -> registry.DatasetInfo:
  """Encodes every image of `source_dataset_name` with `encode_fn` and stores the latents as `out_name`.

  Args:
    encode_fn: images (B, H, W, C) -> latents (B, h, w, c), a jittable JAX function. Called as
      `encode_fn(images, key)` when `rng` is given (e.g. to sample a VAE posterior), and with `params`
      first when `params` is given: `encode_fn(params, images[, key])`.
    source_dataset_name: any jdpm image dataset ("shapes", "imagenet2012", ...); built first if needed.
    out_name: name of the new dataset (lower case letters, digits, "_"); not a built-in name.
    data_dir: where to write it; default $JDPM_DATA_DIR or ~/tensorflow_datasets.
    batch_size: global batch per encoder call; a multiple of the device count and of the process count.
    source_data_dir: where the source dataset is; default `data_dir`.
    splits: source splits to encode; default all.
    latent_dtype: np.float32 or np.float16 (storage; the pipeline yields float32 either way).
    image_format: "float" passes float32 images in [-1, 1]; "uint8" passes the stored uint8 images.
    with_flips: also store "latent_flip", the encoding of the left-right mirrored image, so that the
      training pipeline's random flip is exact.
    rng: optional jax.random key; batch k gets `fold_in(rng, 2k)` (and `2k + 1` for its mirrored images).
    params: optional pytree of arrays (a network's weights), replicated on every device once and passed to
      the compiled encoder as an argument. Small encoders may close over their weights instead, but closed-over
      arrays are baked into the compiled program as constants (slow to compile for a real network).
    mesh: device mesh; the batch is split over all of its axes. Default: `jdpm.parallel.make_mesh()`.
    overwrite: rebuild even if `out_name` already exists.
  Returns:
    the new dataset's `DatasetInfo` (image_shape = latent shape).

  Multi-host: every process calls this with the same arguments; each reads every record and feeds its
  devices' rows of each batch; process 0 writes the files.
  """
  if not _NAME_PATTERN.match(out_name) or out_name.split("/")[0] in {n.split("/")[0] for n in registry.BUILTIN}:
    raise ValueError(f"out_name={out_name!r} must be lower case letters, digits and '_', starting with a letter, "
                     f"and not a built-in dataset name ({', '.join(registry.BUILTIN)}).")
  if image_format not in IMAGE_FORMATS:
    raise ValueError(f"image_format={image_format!r}; use one of {IMAGE_FORMATS}.")
  latent_dtype = np.dtype(latent_dtype)
  data_dir = storage.resolve_data_dir(data_dir)
  source_builder = registry.get_builder(source_dataset_name, data_dir=source_data_dir or data_dir)
  if registry.is_latent(source_builder):
    raise ValueError(f"{source_dataset_name!r} is already a latent dataset; encode an image dataset.")
  source_info = registry.dataset_info(source_dataset_name, data_dir=source_data_dir or data_dir)
  splits = list(source_builder.info.splits) if splits is None else list(splits)
  mesh, batch_sharding, replicated = _mesh_and_shardings(mesh)
  if batch_size % mesh.size or batch_size % jax.process_count():
    raise ValueError(f"batch_size={batch_size} must be a multiple of the device count {mesh.size} "
                     f"and of the process count {jax.process_count()}.")

  example = jax.ShapeDtypeStruct((batch_size, *source_info.image_shape),
                                 np.float32 if image_format == "float" else np.uint8)
  args = (example,) if rng is None else (example, rng)
  if params is not None:
    args = (params, *args)
  latent_shape = jax.eval_shape(encode_fn, *args).shape
  if len(latent_shape) < 2 or latent_shape[0] != batch_size:
    raise ValueError(f"encode_fn must map a batch (B, ...) to latents (B, ...); for B={batch_size} it "
                     f"returned shape {latent_shape}.")
  in_shardings = (batch_sharding,) if rng is None else (batch_sharding, replicated)
  jitted = jax.jit(encode_fn, in_shardings=in_shardings if params is None else (replicated, *in_shardings),
                   out_shardings=replicated)

  @functools.cache
  def encoder():  # copies the weights to the devices once, and only if something is encoded
    return jitted if params is None else functools.partial(jitted, _replicate(params, replicated))

  def encoded(split):
    source = source_builder.as_data_source(split=split)
    return _encode_split(source, encoder(), batch_size, batch_sharding, image_format, with_flips, rng)

  features = {"latent": storage.float_feature(latent_shape[1:], latent_dtype), "label": storage.label_feature()}
  if with_flips:
    features["latent_flip"] = storage.float_feature(latent_shape[1:], latent_dtype)
  metadata = {"num_classes": source_info.num_classes, "source": source_dataset_name,
              "image_format": image_format}

  class LatentDataset(storage.ArrayRecordBuilder, skip_registration=True):
    """Latents of `source_dataset_name` under `encode_fn`."""

    name = out_name
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description=f"Latents of {source_dataset_name} ({image_format} images in).",
          features=tfds.features.FeaturesDict(features),
          disable_shuffling=True,  # record i encodes source record i
          metadata=tfds.core.MetadataDict(metadata),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split) for split in splits}

    def _generate_examples(self, split):
      for index, latent, latent_flip, label in encoded(split):
        example = {"latent": latent.astype(latent_dtype), "label": label}
        if with_flips:
          example["latent_flip"] = latent_flip.astype(latent_dtype)
        yield index, example

  builder = LatentDataset(data_dir=data_dir)
  needs_build = overwrite or not builder.is_prepared()
  if jax.process_count() > 1:  # all processes must agree, or the sharded calls would not line up
    from jax.experimental import multihost_utils

    needs_build = bool(multihost_utils.broadcast_one_to_all(np.asarray(needs_build)))
  if needs_build:
    if jax.process_index() == 0:
      if overwrite:
        shutil.rmtree(builder.data_dir, ignore_errors=True)
        builder = LatentDataset(data_dir=data_dir)
      builder.download_and_prepare()
    else:  # take part in every sharded encoder call; process 0 writes
      for split in splits:
        for _ in encoded(split):
          pass
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"build_latent_dataset {out_name}")
  return registry.dataset_info(out_name, data_dir=data_dir)
