"""Writes the reference outputs of a tiny diffusers ``AutoencoderKL`` used by ``tests/test_vae.py``.

Needs torch and diffusers (run it in an environment that has them; jdpm never imports either):

  python tools/make_vae_reference.py [--out tests/data/vae_tiny.npz] [--check]

``--check`` regenerates the file in a temporary folder and compares it with ``--out``: parameters
and inputs bit-exact, outputs within 1e-5 (max |diff| / max |stored|; float32 kernels differ
between CPUs).

The model is diffusers' AutoencoderKL with TINY_CONFIG (three levels, so two down/up-samplings,
a width change at every level, and the mid-block attention at 4×4). All parameters are drawn
from a seeded torch Generator: weights and biases N(0, 0.1²), GroupNorm scales 1 + N(0, 0.1²), so
every affine parameter, the attention and the shortcuts change the outputs.

Arrays in the archive (NCHW, float32, as PyTorch):
  param/<diffusers key>  the state dict, new attention key convention (to_q/to_k/to_v/to_out.0)
  input/x                (2, 3, 16, 16) images, uniform in [-1, 1]
  input/z                (2, 4, 4, 4) latents, N(0, 1), fed to decode
  output/mean            (2, 4, 4, 4) posterior mean of encode(x)
  output/logvar          (2, 4, 4, 4) posterior log-variance (clamped to [-30, 20], as diffusers)
  output/decoded         (2, 3, 16, 16) decode(z)
  output/reconstruction  (2, 3, 16, 16) decode(mean): encode → decode without sampling
"""

import argparse
import os
import tempfile

import numpy as np
import torch
from diffusers import AutoencoderKL

import official_common as common

CHECK_TOLERANCES = {"output/": 1e-5}
TINY_CONFIG = dict(in_channels=3, out_channels=3, block_out_channels=(16, 24, 32),
                   down_block_types=("DownEncoderBlock2D",) * 3,
                   up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1,
                   latent_channels=4, norm_num_groups=8)
SEED = 0
STD = 0.1


def randomize(model, generator):
  """Overwrites every parameter with seeded random values (GroupNorm scales around 1)."""
  norm_scales = {f"{name}.weight" for name, module in model.named_modules()
                 if isinstance(module, torch.nn.GroupNorm)}
  with torch.no_grad():
    for name, param in sorted(model.named_parameters()):
      values = STD * torch.randn(param.shape, generator=generator)
      param.copy_(values + 1.0 if name in norm_scales else values)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  default = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "vae_tiny.npz")
  parser.add_argument("--out", default=default)
  parser.add_argument("--check", action="store_true",
                      help="regenerate into a temporary folder and compare with --out")
  args = parser.parse_args()
  if args.check:
    stored = args.out
    with tempfile.TemporaryDirectory() as tmp:
      args.out = os.path.join(tmp, "vae_tiny.npz")
      write(args)
      common.finish([common.check_written(args.out, stored, CHECK_TOLERANCES)])
    return
  write(args)


def write(args):

  generator = torch.Generator().manual_seed(SEED)
  model = AutoencoderKL(**TINY_CONFIG).eval()
  randomize(model, generator)
  x = 2 * torch.rand((2, 3, 16, 16), generator=generator) - 1
  z = torch.randn((2, 4, 4, 4), generator=generator)
  with torch.no_grad():
    posterior = model.encode(x).latent_dist
    decoded = model.decode(z).sample
    reconstruction = model.decode(posterior.mean).sample

  arrays = {f"param/{k}": v.numpy() for k, v in model.state_dict().items()}
  arrays.update({"input/x": x.numpy(), "input/z": z.numpy(), "output/mean": posterior.mean.numpy(),
                 "output/logvar": posterior.logvar.numpy(), "output/decoded": decoded.numpy(),
                 "output/reconstruction": reconstruction.numpy()})
  np.savez_compressed(args.out, **{k: np.ascontiguousarray(v, np.float32)
                                   for k, v in arrays.items()})
  print(f"wrote {args.out}: {len(model.state_dict())} parameters "
        f"({sum(p.numel() for p in model.parameters()):,} values), "
        f"{os.path.getsize(args.out) / 1e6:.2f} MB")


if __name__ == "__main__":
  main()
