"""Writes ``tests/data/inception_ref.npz``: pytorch-fid's FID InceptionV3 on random weights.

Needs torch, torchvision and pytorch-fid (jdpm itself never imports them):

  python tools/make_inception_reference.py [--out tests/data/inception_ref.npz] [--check]

``--check`` regenerates the file in a temporary folder and compares it with ``--out``: inputs,
shapes and the legacy fixture's arrays bit-exact (its bytes load to the same tensors), network
outputs and resizes within 1e-5 (max |diff| / max |stored|; float32 kernels differ between CPUs).

Nothing is downloaded: pytorch-fid's weight loader is replaced by a function returning random
weights, so ``pytorch_fid.inception.fid_inception_v3`` builds its exact architecture (the FID
blocks) and checks the keys and shapes with its strict ``load_state_dict``.

The weights are not stored. They follow ``random_state_dict`` below, a numpy-only rule that
``tests/test_inception.py`` repeats: one ``np.random.default_rng(seed)`` draws
``standard_normal(shape)`` (float64, then float32) for every key in sorted order, scaled per kind
(``kind_std``): conv kernels by sqrt(2 / fan_in) (He, so activations neither vanish nor blow
up through the network); BN weight ``1 + 0.1 z``, bias ``0.1 z``, running_mean ``0.1 z``,
running_var ``exp(0.2 z)``; fc weight ``z / sqrt(2048)``, fc bias ``0.1 z``.
``num_batches_tracked`` buffers draw nothing and are 0.

Arrays in the archive (images NHWC, features as jdpm returns them):
  seed, keys, shapes       the rule's seed; state-dict keys (sorted) and their shapes padded
                           with -1 to 4 dims (so the test rebuilds the dict without torch)
  images                   (2, 64, 64, 3) uint8; pytorch-fid is fed images / 255 as NCHW
  pool3                    (2, 2048) InceptionV3(resize_input=True, normalize_input=True) output
  logits                   (2, 1008) fc(pool3), as torchvision's Inception3 (dropout off in eval)
  logits_unbiased          (2, 1008) pool3 @ fc.weight.T (the bias-free logits of the IS code)
  spatial                  (2, 2023) forward hook on Mixed_6d.branch1x1 (B, 192, 17, 17): the
                           first 7 channels, transposed to (B, 17, 17, 7), flattened
  resize/<name>/shape      (H, W) of an input drawn as ``default_rng(resize_seed).random((1, 3,
                           H, W))`` (float64 → float32); ``resize/<name>/torch`` is
                           F.interpolate(size=299, bilinear, align_corners=False) and
                           ``resize/<name>/tf1`` TF1's legacy resize (grid_sample in float64
                           with the affine shift 1/in - 1/out, border padding), both NHWC,
                           every 5th row and column
  legacy_pth               bytes of ``torch.save(fixture, _use_new_zipfile_serialization=False)``
                           for the small ``legacy_fixture()`` dict (with strided and offset
                           views of one storage): the pre-1.6 format the released FID weights
                           are in; ``legacy/<key>`` are the expected arrays
  param_count, buffer_count   numel of the parameters / of the BN running statistics
"""

import argparse
import io
import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from pytorch_fid import inception as fid_inception

import official_common as common

CHECK_TOLERANCES = {"pool3": 1e-5, "logits": 1e-5, "spatial": 1e-5, "resize/": 1e-5}

SEED = 20151205
RESIZE_SEED = 7
RESIZE_CASES = {"up": (37, 53), "down": (401, 613)}
SUBSAMPLE = 5


def kind_std(key, shape):
  """(scale, offset, transform) for ``key``: value = transform(offset + scale · z); None for
  buffers that draw nothing."""
  if key.endswith("num_batches_tracked"):
    return None
  if key == "fc.weight":
    return 1 / np.sqrt(shape[1]), 0.0, None
  if key == "fc.bias":
    return 0.1, 0.0, None
  if key.endswith("conv.weight"):
    return np.sqrt(2.0 / np.prod(shape[1:])), 0.0, None
  if key.endswith("bn.weight"):
    return 0.1, 1.0, None
  if key.endswith(("bn.bias", "bn.running_mean")):
    return 0.1, 0.0, None
  if key.endswith("bn.running_var"):
    return 0.2, 0.0, np.exp
  raise ValueError(f"No rule for {key}")


def random_state_dict(shapes, seed=SEED):
  """{key: shape} → {key: float32 array} by the rule in the module docstring."""
  rng = np.random.default_rng(seed)
  out = {}
  for key in sorted(shapes):
    rule = kind_std(key, shapes[key])
    if rule is None:
      out[key] = np.zeros(shapes[key], np.int64)
      continue
    scale, offset, transform = rule
    value = offset + scale * rng.standard_normal(shapes[key])
    out[key] = (transform(value) if transform else value).astype(np.float32)
  return out


def architecture_shapes():
  # pytorch-fid's FID blocks subclass torchvision's and only change forward(), so this model has
  # the same state-dict keys and shapes; fid_inception_v3's strict load re-checks it below.
  model = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None,
                                          init_weights=False)
  return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def build_fid_model(state_dict):
  """pytorch-fid's InceptionV3 wrapper (pool3 only) and the underlying fid_inception_v3."""
  built = {}
  original_builder = fid_inception.fid_inception_v3

  def capture():
    built["inception"] = original_builder()
    return built["inception"]

  fid_inception.load_state_dict_from_url = lambda *a, **k: {
      k: torch.from_numpy(v) for k, v in state_dict.items()}
  fid_inception.fid_inception_v3 = capture
  wrapper = fid_inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()
  return wrapper, built["inception"].eval()


def run_reference(wrapper, inception, images):
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
  hooked = {}
  handles = [
      inception.Mixed_6d.branch1x1.register_forward_hook(
          lambda m, i, o: hooked.__setitem__("branch1x1", o)),
      inception.Mixed_6d.register_forward_hook(lambda m, i, o: hooked.__setitem__("mixed", o)),
  ]
  with torch.no_grad():
    pool3 = wrapper(x)[0].flatten(1)
    logits = inception.fc(pool3)  # Inception3: avgpool → dropout (identity in eval) → fc
    logits_unbiased = pool3 @ inception.fc.weight.T
  for h in handles:
    h.remove()
  branch = hooked["branch1x1"]
  # branch1x1 is the first output of the block's concat, so its channels lead Mixed_6d's output.
  assert torch.equal(branch, hooked["mixed"][:, :192])
  spatial = branch[:, :7].permute(0, 2, 3, 1).reshape(len(x), -1)
  return {"pool3": pool3, "logits": logits, "logits_unbiased": logits_unbiased,
          "spatial": spatial}


def resize_references():
  out = {}
  for name, (h, w) in RESIZE_CASES.items():
    rng = np.random.default_rng(RESIZE_SEED)
    x = torch.from_numpy(rng.random((1, 3, h, w)).astype(np.float32))
    torch_style = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    # TF1 ResizeBilinear (align_corners=False, no half-pixel centres) samples input pixel
    # j · in / out; as a grid_sample, that is the identity grid shifted by 1/in - 1/out. In
    # float64: float32 normalised coordinates would be off by ~in · 2^-24 pixels.
    theta = torch.eye(2, 3, dtype=torch.float64)[None]
    theta[0, 0, 2] += 1 / w - 1 / 299
    theta[0, 1, 2] += 1 / h - 1 / 299
    grid = F.affine_grid(theta, (1, 3, 299, 299), align_corners=False)
    tf1 = F.grid_sample(x.double(), grid, mode="bilinear", padding_mode="border",
                        align_corners=False).float()
    out[f"resize/{name}/shape"] = np.array([h, w])
    for kind, y in (("torch", torch_style), ("tf1", tf1)):
      out[f"resize/{name}/{kind}"] = y.permute(0, 2, 3, 1)[:, ::SUBSAMPLE, ::SUBSAMPLE].numpy()
  return out


def legacy_fixture():
  """A small state dict in the legacy (pre-zip) torch.save format, and its arrays."""
  g = torch.Generator().manual_seed(0)
  base = torch.randn(4, 6, generator=g)
  fixture = {
      "conv.weight": torch.randn(3, 2, 3, 3, generator=g),
      "bn.running_var": torch.rand(3, generator=g, dtype=torch.float64),
      "bn.num_batches_tracked": torch.tensor(5),
      "fc.weight": base,
      "fc.weight_t": base.t(),          # a strided view sharing fc.weight's storage
      "fc.rows": base[1::2],            # an offset view of the same storage
      "half": torch.randn(5, generator=g).half(),
  }
  buffer = io.BytesIO()
  torch.save(fixture, buffer, _use_new_zipfile_serialization=False)
  expected = {f"legacy/{k}": v.numpy().copy() for k, v in fixture.items()}
  return np.frombuffer(buffer.getvalue(), np.uint8), expected


def _same_legacy_contents(a, b):
  load = lambda raw: torch.load(io.BytesIO(raw.tobytes()), weights_only=True)
  a, b = load(a), load(b)
  return a.keys() == b.keys() and all(
      a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].stride() == b[k].stride()
      and torch.equal(a[k], b[k]) for k in a)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=os.path.join("tests", "data", "inception_ref.npz"))
  parser.add_argument("--check", action="store_true",
                      help="regenerate into a temporary folder and compare with --out")
  args = parser.parse_args()
  if args.check:
    stored = args.out
    with tempfile.TemporaryDirectory() as tmp:
      args.out = os.path.join(tmp, "inception_ref.npz")
      write(args)
      with np.load(args.out) as new, np.load(stored) as old:
        arrays = {k: new[k] for k in new.files}
        # The legacy format names storages by their memory address, so its bytes differ from run
        # to run: what must agree is what it loads to.
        same = _same_legacy_contents(arrays["legacy_pth"], old["legacy_pth"])
        print(f"legacy_pth: {'loads to the stored contents' if same else 'MISMATCH'}")
        arrays["legacy_pth"] = old["legacy_pth"]
      common.finish([same, common.save_or_check(stored, arrays, True, CHECK_TOLERANCES)])
    return
  write(args)


def write(args):
  torch.set_num_threads(2)

  shapes = architecture_shapes()
  state_dict = random_state_dict(shapes)
  wrapper, inception = build_fid_model(state_dict)
  param_count = sum(p.numel() for p in inception.parameters())
  buffer_count = sum(b.numel() for n, b in inception.named_buffers()
                     if not n.endswith("num_batches_tracked"))

  images = np.random.default_rng(SEED).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  outputs = {k: v.numpy() for k, v in run_reference(wrapper, inception, images).items()}
  for k, v in outputs.items():
    print(f"{k:16s} {v.shape} mean {v.mean():+.4f} std {v.std():.4f} "
          f"zero fraction {np.mean(v == 0):.3f}")

  keys = sorted(shapes)
  padded = np.full((len(keys), 4), -1, np.int64)
  for i, key in enumerate(keys):
    padded[i, :len(shapes[key])] = shapes[key]
  legacy_bytes, legacy_expected = legacy_fixture()
  np.savez_compressed(
      args.out, seed=np.int64(SEED), keys=np.array(keys), shapes=padded, images=images,
      param_count=np.int64(param_count), buffer_count=np.int64(buffer_count),
      legacy_pth=legacy_bytes, resize_seed=np.int64(RESIZE_SEED), **outputs,
      **resize_references(), **legacy_expected)
  print(f"params {param_count:,}, BN statistics {buffer_count:,}; wrote {args.out} "
        f"({os.path.getsize(args.out) / 1024:.0f} KiB)")


if __name__ == "__main__":
  main()
