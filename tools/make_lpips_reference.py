"""Regenerates tests/data/lpips_reference.npz from the `lpips` package (v0.1) with random backbones.

Needs torch, torchvision and ``pip install lpips`` (0.1.4); no checkout:

  python tools/make_lpips_reference.py [--check]

The ImageNet backbones are not available offline, so each backbone gets random weights from a
recipe the test repeats in NumPy: ``np.random.default_rng(0)``, for every conv of torchvision's
``features`` in index order, ``weight = standard_normal((out, in, k, k)) * sqrt(2 / (in k k))``
then ``bias = 0.1 * standard_normal(out)`` (float32); the linear heads are the package's own
trained ``weights/v0.1/<net>.pth``, stored here as ``<net>/lin<k>`` (1, C, 1, 1). Inputs, drawn
from ``np.random.default_rng(1)`` in [-1, 1]: ``alex/x0``, ``alex/x1`` (3, 3, 48, 48) and
``vgg/x0``, ``vgg/x1`` (2, 3, 32, 32), the second of each pair a noisy copy of the first, NCHW.
Outputs ``<net>/out`` (B,): ``lpips.LPIPS(net=net, pnet_rand=True)(x0, x1)`` in eval mode.

``--check``: inputs and heads bit-exact, outputs within 1e-5 (max |diff| / max |stored|).
"""

import numpy as np

import official_common as common

CONVS = {"alex": [(0, 3, 64, 11), (3, 64, 192, 5), (6, 192, 384, 3), (8, 384, 256, 3), (10, 256, 256, 3)],
         "vgg": [(0, 3, 64, 3), (2, 64, 64, 3), (5, 64, 128, 3), (7, 128, 128, 3), (10, 128, 256, 3),
                 (12, 256, 256, 3), (14, 256, 256, 3), (17, 256, 512, 3), (19, 512, 512, 3), (21, 512, 512, 3),
                 (24, 512, 512, 3), (26, 512, 512, 3), (28, 512, 512, 3)]}
SLICE_STARTS = {"alex": (0, 2, 5, 8, 10), "vgg": (0, 4, 9, 16, 23)}
SHAPES = {"alex": (3, 3, 48, 48), "vgg": (2, 3, 32, 32)}


def backbone(net):
  rng = np.random.default_rng(0)
  out = {}
  for index, c_in, c_out, k in CONVS[net]:
    out[f"features.{index}.weight"] = (rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2.0 / (c_in * k * k))
                                       ).astype(np.float32)
    out[f"features.{index}.bias"] = (0.1 * rng.standard_normal(c_out)).astype(np.float32)
  return out


def main():
  import torch  # pylint: disable=import-outside-toplevel
  import lpips  # pylint: disable=import-outside-toplevel
  args = common.parser(__doc__.split("\n")[0], {}).parse_args()
  rng = np.random.default_rng(1)
  arrays = {}
  for net in ("alex", "vgg"):
    model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).eval()
    net_state = {}
    for key, value in backbone(net).items():
      index = int(key.split(".")[1])
      k = max(i for i, start in enumerate(SLICE_STARTS[net]) if start <= index) + 1
      net_state[f"slice{k}.{index}.{key.split('.')[2]}"] = torch.from_numpy(value)
    missing = model.net.load_state_dict(net_state, strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys, missing
    x0 = rng.uniform(-1, 1, SHAPES[net]).astype(np.float32)
    x1 = np.clip(x0 + 0.3 * rng.standard_normal(SHAPES[net]), -1, 1).astype(np.float32)
    with torch.no_grad():
      out = model(torch.from_numpy(x0), torch.from_numpy(x1)).reshape(-1)
    arrays[f"{net}/x0"], arrays[f"{net}/x1"] = x0, x1
    arrays[f"{net}/out"] = common.to_numpy(out)
    for k in range(5):
      arrays[f"{net}/lin{k}"] = common.to_numpy(getattr(model, f"lin{k}").model[1].weight)
  ok = common.save_or_check(args.out / "lpips_reference.npz", arrays, args.check, {"alex/out": 1e-5, "vgg/out": 1e-5})
  common.finish([ok])


if __name__ == "__main__":
  main()
