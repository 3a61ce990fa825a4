"""Regenerates tests/data/edt_tiny.npz, edt_tiny_std0p1.npz, edt_amm.npz and edt_masked.npz from
the official EDT code.

Needs torch, timm and einops, and a checkout of github.com/xinwangChen/EDT at commit
15faf9c07c7b17f1f200c54f14321a383f923c16 (``models_edt.py``):

  python tools/make_edt_reference.py --edt /path/to/EDT [--check]

The tiny model keeps the official S/B stage structure (the AMM placement is hard-coded for 12
blocks) with narrow widths::

  EDT(input_size=32, patch_size=2, in_channels=4, hidden_size=48, depth=12,
      num_heads=[3, 4, 5, 4, 3], num_classes=10, learn_sigma=True, stages_depth=[2, 2, 2, 3, 3],
      dims=[48, 64, 80, 64, 48], size="S", local=True)   # local=False: without AMM

in eval mode (AMM acts only in eval mode; AMM blocks 7 and 10). The five frozen sin-cos tables
are kept, every other entry is random (tools/official_common.py).

edt_tiny.npz (std 0.02) / edt_tiny_std0p1.npz (std 0.1, plus ``act/amm/<module>``): inputs,
``out/{noamm,amm}`` (forward) and ``out/cfg2.0_{noamm,amm}`` (forward_with_cfg). The random
parameters are not stored (the tests regenerate the torch draws without torch); the files keep
``param_keys`` (state-dict order), ``param_ndim`` and the concatenated ``param_shapes``, the frozen
tables as ``param/<name>``, and two drawn entries as ``check/<name>``.

edt_amm.npz: the official modulation matrices held by the AMM blocks (``amm/grid16``,
``amm/grid8``) and the relative-position index of each token grid
(``aux/relative_position_index/grid{16,8,4}``, int32).

edt_masked.npz: the official masked training forward ``forward(x, t, y, enable_down_mask=True)``
of the std-0.1 model without AMM, after ``random.seed(s)`` and ``torch.manual_seed(s)`` for
s in {0, 3}: the keep masks the two down-sampling modules received (``seed{s}/down_keep/{0,1}``,
(3, 256) and (3, 64) bool: official (B, L, 1) float 1/0 masks of each module's input tokens,
row-major), and the output ``seed{s}/out`` (3, 8, 32, 32).

``--check``: parameters, inputs, masks and index tables bit-exact; outputs within
``common.NETWORK_TOL``, modulation matrices within 1e-6 (float32 exp/cos rounding).
"""

import random

import numpy as np

import official_common as common

EDT = ("xinwangChen/EDT", "15faf9c07c7b17f1f200c54f14321a383f923c16")
TINY = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=48, depth=12,
            num_heads=[3, 4, 5, 4, 3], mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10,
            learn_sigma=True, stages_depth=[2, 2, 2, 3, 3], dims=[48, 64, 80, 64, 48],
            mid_mask=False, size="S")
FROZEN = ["pos_embed", "down_blocks.0.pos_embed", "down_blocks.1.pos_embed",
          "concat_blocks.0.pos_embed", "concat_blocks.1.pos_embed"]
CHECKED = ["blocks.7.attn.rel_pos_bias.relative_position_bias_table", "final_layer.linear.bias"]
AMM_BLOCKS = [7, 10]
BLOCK_RESOLUTION = [16, 16, 8, 8, 4, 4, 8, 8, 8, 16, 16, 16]
CFG_SCALE = 2.0
ACTIVATIONS = (["x_embedder", "t_embedder", "y_embedder", "blocks.0", "blocks.1", "down_blocks.0",
                "blocks.2", "blocks.3", "down_blocks.1", "blocks.4", "blocks.5", "up_blocks.0",
                "concat_blocks.0", "blocks.6", "blocks.7", "blocks.8", "up_blocks.1",
                "concat_blocks.1", "blocks.9", "blocks.10", "blocks.11", "final_layer"])
MASK_SEEDS = (0, 3)


def build(checkout, std):
  """(model with AMM, model without AMM, numpy state dict), both models in eval mode."""
  with common.on_path(checkout):
    models = common.load_module(checkout, "models_edt.py", "edt_official_models")
    amm = models.EDT(**TINY, local=True).eval()
    noamm = models.EDT(**TINY, local=False).eval()
  params = common.randomise(amm, std, keep=set(FROZEN))
  noamm.load_state_dict(amm.state_dict())
  return amm, noamm, params


def network_file(amm, noamm, params, std):
  import torch  # pylint: disable=import-outside-toplevel
  inputs = common.network_inputs()
  x, t, y = (torch.from_numpy(inputs[f"input/{k}"]) for k in "xty")
  cfg = [torch.from_numpy(inputs[f"input/{k}_cfg"]) for k in "xty"]
  arrays = {k: v for k, v in inputs.items() if k != "input/x_cfg"}
  with torch.no_grad():
    arrays["out/noamm"] = common.to_numpy(noamm(x, t, y))
    with common.capture(amm, ACTIVATIONS) as act:
      arrays["out/amm"] = common.to_numpy(amm(x, t, y))
    arrays[f"out/cfg{CFG_SCALE}_noamm"] = common.to_numpy(noamm.forward_with_cfg(*cfg, CFG_SCALE))
    arrays[f"out/cfg{CFG_SCALE}_amm"] = common.to_numpy(amm.forward_with_cfg(*cfg, CFG_SCALE))
  if std == 0.1:
    arrays.update({f"act/amm/{k}": v for k, v in act.items()})
  keys = list(params)
  arrays["param_keys"] = np.asarray(keys)
  arrays["param_ndim"] = np.asarray([params[k].ndim for k in keys], np.int32)
  arrays["param_shapes"] = np.concatenate([np.asarray(params[k].shape, np.int64) for k in keys])
  arrays.update({f"param/{k}": params[k] for k in FROZEN})
  arrays.update({f"check/{k}": params[k] for k in CHECKED})
  arrays.update({
      "meta/amm_block_indices": np.asarray(AMM_BLOCKS, np.int64),
      "meta/block_resolution": np.asarray(BLOCK_RESOLUTION, np.int64),
      "meta/stages_depth": np.asarray(TINY["stages_depth"], np.int64),
      "meta/dims": np.asarray(TINY["dims"], np.int64),
      "meta/num_heads": np.asarray(TINY["num_heads"], np.int64),
      "meta/param_std": float(std), "meta/param_seed": common.PARAM_SEED,
      "meta/input_seed": common.INPUT_SEED, "meta/cfg_scale": CFG_SCALE})
  return arrays


def amm_file(amm):
  blocks = amm.blocks
  arrays = {}
  for i in AMM_BLOCKS:
    matrix = blocks[i].attn.modulation_matrix  # (1, 1, N, N), a plain attribute
    arrays[f"amm/grid{BLOCK_RESOLUTION[i]}"] = common.to_numpy(matrix[0, 0]).astype(np.float32)
  for i in (0, 2, 4):  # one block per token grid: 16, 8, 4
    index = blocks[i].attn.rel_pos_bias.relative_position_index
    arrays[f"aux/relative_position_index/grid{BLOCK_RESOLUTION[i]}"] = (
        common.to_numpy(index).astype(np.int32))
  return arrays


def masked_file(noamm):
  """The official masked forward, recording the masks each down-sampling module received."""
  import torch  # pylint: disable=import-outside-toplevel
  inputs = common.network_inputs()
  x, t, y = (torch.from_numpy(inputs[f"input/{k}"]) for k in "xty")
  arrays = {"meta/param_std": 0.1, "meta/seeds": np.asarray(MASK_SEEDS, np.int64)}
  for seed in MASK_SEEDS:
    received = {}
    handles = []
    for k, module in enumerate(noamm.down_blocks):
      def hook(_module, args, k=k):
        received[k] = common.to_numpy(args[2])  # DownSample.forward(x, c, mask)
      handles.append(module.register_forward_pre_hook(hook))
    random.seed(seed)
    torch.manual_seed(seed)
    with torch.no_grad():
      out = noamm(x, t, y, enable_down_mask=True)
    for h in handles:
      h.remove()
    for k, mask in received.items():
      assert mask.shape[-1] == 1 and set(np.unique(mask)) <= {0.0, 1.0}
      arrays[f"seed{seed}/down_keep/{k}"] = mask[..., 0] == 1.0
    arrays[f"seed{seed}/out"] = common.to_numpy(out)
  return arrays


def main():
  args = common.parser(__doc__, {"edt": EDT}).parse_args()
  common.verify_checkout(args.edt, *EDT, ["models_edt.py"])
  ok = []
  for name, std in [("edt_tiny.npz", 0.02), ("edt_tiny_std0p1.npz", 0.1)]:
    amm, noamm, params = build(args.edt, std)
    ok.append(common.save_or_check(args.out / name, network_file(amm, noamm, params, std),
                                   args.check, common.NETWORK_TOL))
  ok.append(common.save_or_check(args.out / "edt_amm.npz", amm_file(amm), args.check,
                                 {"amm/": 1e-6}))
  ok.append(common.save_or_check(args.out / "edt_masked.npz", masked_file(noamm), args.check,
                                 {"seed0/out": 1e-5, "seed3/out": 1e-5}))
  common.finish(ok)


if __name__ == "__main__":
  main()
