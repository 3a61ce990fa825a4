"""Writes the small torch checkpoint used to test jdpm's torch-free ``.pt`` reader.

Needs torch (run it in an environment that has it; jdpm itself never imports torch):

  python tools/make_pt_fixture.py [--out tests/data] [--check]

``--check`` regenerates both files in a temporary folder and expects the .pt file byte for byte
and every array of the .npz bit for bit equal to the stored ones. No official code is involved:
the micro DiT only has the official key names and shapes.

Outputs:
  dit_micro_checkpoint.pt            torch.save of a DiT-style training checkpoint:
                                     {"model": state dict, "ema": state dict,
                                      "opt": {...}, "args": argparse.Namespace, "extras": {...}}
  dit_micro_checkpoint_expected.npz  the same numbers as numpy: "param/<key>" = ema weights,
                                     "model/<key>" = model weights, "extras/<key>" (bfloat16
                                     stored widened to float32).

The micro DiT has input_size=4, patch_size=2, in_channels=2, hidden_size=8, depth=1,
num_heads=2, num_classes=3, learn_sigma=True, class_dropout_prob=0.1. Key names and shapes follow
the official facebookresearch/DiT state dict; values are random (pos_embed is the fixed sin-cos
table).
"""

import argparse
import collections
import filecmp
import os
import tempfile

import numpy as np
import torch

import official_common as common

PT = "dit_micro_checkpoint.pt"
NPZ = "dit_micro_checkpoint_expected.npz"
MICRO = dict(input_size=4, patch_size=2, in_channels=2, hidden_size=8, depth=1, num_heads=2,
             num_classes=3, learn_sigma=True)


def sincos_table(dim, grid):
  """2-D sin-cos table (grid², dim): first half encodes the column, second half the row."""

  def one_d(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    angles = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  coords = np.arange(grid, dtype=np.float32)
  cols, rows = np.meshgrid(coords, coords)
  return np.concatenate([one_d(dim // 2, cols), one_d(dim // 2, rows)], axis=1)


def micro_state_dict(generator):
  d, p, c = MICRO["hidden_size"], MICRO["patch_size"], MICRO["in_channels"]
  out = 2 * c
  grid = MICRO["input_size"] // p
  shapes = {
      "x_embedder.proj.weight": (d, c, p, p), "x_embedder.proj.bias": (d,),
      "t_embedder.mlp.0.weight": (d, 256), "t_embedder.mlp.0.bias": (d,),
      "t_embedder.mlp.2.weight": (d, d), "t_embedder.mlp.2.bias": (d,),
      "y_embedder.embedding_table.weight": (MICRO["num_classes"] + 1, d),
  }
  for i in range(MICRO["depth"]):
    shapes.update({
        f"blocks.{i}.attn.qkv.weight": (3 * d, d), f"blocks.{i}.attn.qkv.bias": (3 * d,),
        f"blocks.{i}.attn.proj.weight": (d, d), f"blocks.{i}.attn.proj.bias": (d,),
        f"blocks.{i}.mlp.fc1.weight": (4 * d, d), f"blocks.{i}.mlp.fc1.bias": (4 * d,),
        f"blocks.{i}.mlp.fc2.weight": (d, 4 * d), f"blocks.{i}.mlp.fc2.bias": (d,),
        f"blocks.{i}.adaLN_modulation.1.weight": (6 * d, d),
        f"blocks.{i}.adaLN_modulation.1.bias": (6 * d,),
    })
  shapes.update({
      "final_layer.linear.weight": (p * p * out, d), "final_layer.linear.bias": (p * p * out,),
      "final_layer.adaLN_modulation.1.weight": (2 * d, d),
      "final_layer.adaLN_modulation.1.bias": (2 * d,),
  })
  state = collections.OrderedDict()
  state["pos_embed"] = torch.from_numpy(sincos_table(d, grid)).float()[None]
  for key, shape in shapes.items():
    state[key] = torch.randn(shape, generator=generator) * 0.3
  return state


def extras(generator):
  base = torch.randn(4, 6, generator=generator)
  shared = torch.arange(10, dtype=torch.float32)
  return {
      "bfloat16": torch.randn(5, generator=generator).to(torch.bfloat16),
      "float16": torch.randn(2, 3, generator=generator).half(),
      "float64": torch.randn(3, generator=generator).double(),
      "int64": torch.arange(-3, 4),
      "int32": torch.tensor([7, -8], dtype=torch.int32),
      "uint8": torch.tensor([0, 255], dtype=torch.uint8),
      "bool": torch.tensor([True, False, True]),
      "transposed": base.t(),                # non-contiguous strides
      "strided": base[:, ::2],               # non-unit stride within a row
      "offset": shared[3:7].view(2, 2),      # view with a storage offset
      "shared_whole": shared,                # same storage, saved once
      "scalar": torch.tensor(2.5),
      "parameter": torch.nn.Parameter(torch.ones(2)),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                    "data"))
  parser.add_argument("--check", action="store_true",
                      help="regenerate into a temporary folder and compare with --out")
  args = parser.parse_args()
  if args.check:
    stored = args.out
    with tempfile.TemporaryDirectory() as tmp:
      args.out = tmp
      write(args)
      same_pt = filecmp.cmp(os.path.join(tmp, PT), os.path.join(stored, PT), shallow=False)
      print(f"{PT}: {'byte-identical' if same_pt else 'MISMATCH (bytes differ)'}")
      ok = common.check_written(os.path.join(tmp, NPZ), os.path.join(stored, NPZ))
    common.finish([same_pt, ok])
    return
  write(args)


def write(args):
  generator = torch.Generator().manual_seed(0)
  ema = micro_state_dict(generator)
  model = micro_state_dict(generator)
  extra = extras(generator)
  checkpoint = {
      "model": model,
      "ema": ema,
      "opt": {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 0, "params": [0, 1]}]},
      "args": argparse.Namespace(model="DiT-micro", global_batch_size=4),
      "extras": extra,
  }
  torch.save(checkpoint, os.path.join(args.out, PT))

  expected = {}
  for key, value in ema.items():
    expected[f"param/{key}"] = value.numpy()
  for key, value in model.items():
    expected[f"model/{key}"] = value.numpy()
  for key, value in extra.items():
    value = value.detach()
    expected[f"extras/{key}"] = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
  np.savez(os.path.join(args.out, NPZ), **expected)


if __name__ == "__main__":
  main()
