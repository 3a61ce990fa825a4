"""Prints the README's model table: parameters and forward MACs of every preset, measured by jdpm itself.

  python tools/model_table.py

Counts use `jax.eval_shape` (nothing is allocated) for 256 px ImageNet models: 32x32x4 latents, 1000 classes,
learned sigma. MACs count every matmul and convolution (attention included), the papers' GFLOPs convention.
"""

import jdpm

PRESETS = ["DiT-S/2", "DiT-B/2", "DiT-L/2", "DiT-XL/2", "EDT-S/2", "EDT-B/2", "EDT-XL/2", "EDT-XL/2-paper",
           "MDTv2-S/2", "MDTv2-B/2", "MDTv2-XL/2"]


def main():
  print("| model | params (M) | forward GMACs | notes |")
  print("|---|---|---|---|")
  notes = {"EDT-XL/2": "stages_depth [6,4,4,7,7], as the released code",
           "EDT-XL/2-paper": "stages_depth [6,6,4,6,6]: 12/12/4 blocks at 16x16/8x8/4x4, the paper's counts",
           "MDTv2-S/2": "decode_layer 6", "MDTv2-B/2": "decode_layer 4", "MDTv2-XL/2": "decode_layer 4"}
  for name in PRESETS:
    model = jdpm.models.create(name)
    params = jdpm.models.count_params(model)
    macs = jdpm.models.count_macs(model)
    print(f"| {name} | {params / 1e6:.2f} | {macs / 1e9:.2f} | {notes.get(name, '')} |", flush=True)


if __name__ == "__main__":
  main()
