"""Regenerates tests/data/mdt_tiny_params.npz and mdt_tiny_outputs.npz from the official MDTv2 code
(and the EDT authors' MDTv2-with-AMM variant).

Needs torch and timm, a checkout of github.com/sail-sg/MDT at commit
7d26c2162c462bd0b90f97f3a1c36cdaaac616ec (``masked_diffusion/models.py``) and one of
github.com/xinwangChen/EDT at commit 15faf9c07c7b17f1f200c54f14321a383f923c16
(``other_models/models_mdt_with_amm.py``):

  python tools/make_mdt_reference.py --mdt /path/to/MDT --edt /path/to/EDT [--check]

The tiny model is ``MDTv2(input_size=32, patch_size=2, in_channels=4, hidden_size=64, depth=6,
num_heads=4, num_classes=10, learn_sigma=True, mask_ratio=0.3, decode_layer=2)`` in eval mode.
*Every* floating state-dict entry is random (pos_embed and decoder_pos_embed are learnable in
MDTv2); the integer ``relative_position_index`` buffers are left out of the files.

mdt_tiny_params.npz: ``param/<name>`` of the std-0.1 model (the std-0.02 model is 0.2 × these).

mdt_tiny_outputs.npz, for std in {std0p02, std0p1}:
* ``<std>/out/forward`` = ``forward(x, t, y)``; ``<std>/out/cfg3.8_pow4.0`` and
  ``<std>/out/cfg4.0_pow0.01`` = ``forward_with_cfg(x_cfg, t_cfg, y_cfg, cfg_scale, scale_pow=...)``;
  ``<std>/out/real_cfg_scale_*`` the power-cosine scales (the official float32 expression);
* ``std0p1/act/<module>`` submodule outputs (batch element 0); ``<std>/meta/*``;
* ``masked/seed{s}/*`` (s in {0, 3}, std 0.1): the official ``forward(..., enable_mask=True)``
  after ``torch.manual_seed(s)``: ``mask`` (3, 256) bool, True = dropped (the official mask),
  ``ratio`` the drawn mask ratio, ``out``, and ``encoder`` = the output of ``en_outblocks.1`` on
  the kept tokens, reordered by token index;
* ``amm/*``: the std-0.1 model built from ``models_mdt_with_amm.py`` with AMM switched on in
  global blocks 1 and 4 (``en_inblocks.1`` and ``de_blocks.0``; the official arrangement is
  hard-coded for 12 blocks), ``amm/out`` = ``forward(x, t, y)``.

``--check``: parameters, inputs, masks and ratios bit-exact; outputs within ``common.NETWORK_TOL``
(``masked/*/out`` and ``masked/*/encoder`` too).
"""

import math

import numpy as np

import official_common as common

MDT = ("sail-sg/MDT", "7d26c2162c462bd0b90f97f3a1c36cdaaac616ec")
EDT = ("xinwangChen/EDT", "15faf9c07c7b17f1f200c54f14321a383f923c16")
TINY = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=64, depth=6, num_heads=4,
            mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True,
            mask_ratio=0.3, decode_layer=2)
STDS = {"std0p02": 0.02, "std0p1": 0.1}
CFG = [(3.8, 4.0), (4.0, 0.01)]
ACTIVATIONS = ["x_embedder", "t_embedder", "y_embedder", "en_inblocks.0", "en_inblocks.1",
               "en_outblocks.0", "en_outblocks.1", "de_blocks.0", "de_blocks.1", "final_layer"]
MASK_SEEDS = (0, 3)
AMM_BLOCKS = (1, 4)
INDEX = "relative_position_index"


def real_cfg_scale(t, cfg_scale, scale_pow, diffusion_steps=1000):
  """The per-sample guidance scale as the official forward_with_cfg computes it (float32)."""
  import torch  # pylint: disable=import-outside-toplevel
  scale_step = (1 - torch.cos(((1 - t / diffusion_steps) ** scale_pow) * math.pi)) * 1 / 2
  return common.to_numpy((cfg_scale - 1) * scale_step + 1)


def outputs_of(model, inputs, prefix, std, arrays):
  import torch  # pylint: disable=import-outside-toplevel
  x, t, y = (torch.from_numpy(inputs[f"input/{k}"]) for k in "xty")
  x_cfg, t_cfg, y_cfg = (torch.from_numpy(inputs[f"input/{k}_cfg"]) for k in "xty")
  with torch.no_grad():
    with common.capture(model, ACTIVATIONS) as act:
      arrays[f"{prefix}/out/forward"] = common.to_numpy(model(x, t, y))
    for cfg_scale, scale_pow in CFG:
      name = f"cfg{cfg_scale}_pow{scale_pow}"
      arrays[f"{prefix}/out/{name}"] = common.to_numpy(model.forward_with_cfg(
          x_cfg, t_cfg, y_cfg, cfg_scale, scale_pow=scale_pow))
      arrays[f"{prefix}/out/real_cfg_scale_{name}"] = real_cfg_scale(t, cfg_scale, scale_pow)
  if std == 0.1:
    arrays.update({f"{prefix}/act/{k}": v for k, v in act.items()})
  arrays.update({f"{prefix}/meta/param_std": float(std),
                 f"{prefix}/meta/param_seed": common.PARAM_SEED,
                 f"{prefix}/meta/input_seed": common.INPUT_SEED})


def masked_outputs(model, inputs, arrays):
  """The official masked forward, recording what ``random_masking`` drew."""
  import torch  # pylint: disable=import-outside-toplevel
  x, t, y = (torch.from_numpy(inputs[f"input/{k}"]) for k in "xty")
  original = model.random_masking
  for seed in MASK_SEEDS:
    drawn = {}

    def recording(x, mask_ratio):
      result = original(x, mask_ratio)
      drawn.update(ratio=mask_ratio, mask=result[1], ids_keep=result[3])
      return result

    model.random_masking = recording
    torch.manual_seed(seed)
    with torch.no_grad():
      with _EncoderOutput(model) as encoder:
        out = model(x, t, y, enable_mask=True)
    del model.random_masking  # back to the class method
    ids_keep = common.to_numpy(drawn["ids_keep"])
    order = np.argsort(ids_keep, axis=1)  # kept tokens by token index
    arrays[f"masked/seed{seed}/mask"] = common.to_numpy(drawn["mask"]) == 1.0
    arrays[f"masked/seed{seed}/ratio"] = common.to_numpy(drawn["ratio"]).reshape(())
    arrays[f"masked/seed{seed}/out"] = common.to_numpy(out)
    arrays[f"masked/seed{seed}/encoder"] = np.take_along_axis(encoder["out"], order[..., None],
                                                              axis=1)
  assert model.random_masking.__func__ is original.__func__


class _EncoderOutput:
  """Records the full-batch output of ``en_outblocks.1`` (the last encoder block)."""

  def __init__(self, model):
    self.module = model.en_outblocks[-1]
    self.out = {}

  def __enter__(self):
    def hook(_module, _inputs, output):
      self.out["out"] = common.to_numpy(output).copy()
    self.handle = self.module.register_forward_hook(hook)
    return self.out

  def __exit__(self, *exc):
    self.handle.remove()


def amm_output(edt_checkout, state_dict, inputs, arrays):
  import torch  # pylint: disable=import-outside-toplevel
  with common.on_path(edt_checkout):
    amm_models = common.load_module(edt_checkout, "other_models/models_mdt_with_amm.py",
                                    "mdt_amm_official_models")
    model = amm_models.MDTv2(**TINY).eval()
  model.load_state_dict(state_dict)
  blocks = list(model.en_inblocks) + list(model.en_outblocks) + list(model.de_blocks)
  grid = TINY["input_size"] // TINY["patch_size"]
  for i in AMM_BLOCKS:  # what the official constructor does for a block marked in is_local
    blocks[i].attn.local = True
    blocks[i].attn.modulation_matrix = amm_models.modulation_matrix(grid, 3 * grid)[None, None]
  x, t, y = (torch.from_numpy(inputs[f"input/{k}"]) for k in "xty")
  with torch.no_grad():
    arrays["amm/out"] = common.to_numpy(model(x, t, y))
  arrays["amm/blocks"] = np.asarray(AMM_BLOCKS, np.int64)


def make(mdt_checkout, edt_checkout):
  with common.on_path(mdt_checkout):
    models = common.load_module(mdt_checkout, "masked_diffusion/models.py", "mdt_official_models")
    model = models.MDTv2(**TINY).eval()
  inputs = common.network_inputs()
  outputs = {k: inputs[k] for k in ("input/x", "input/t", "input/y", "input/y_cfg")}
  for prefix, std in STDS.items():
    state = common.randomise(model, std)
    outputs_of(model, inputs, prefix, std, outputs)
  # The model now holds the std-0.1 parameters.
  params = {f"param/{k}": v for k, v in state.items() if not k.endswith(INDEX)}
  masked_outputs(model, inputs, outputs)
  amm_output(edt_checkout, model.state_dict(), inputs, outputs)
  return params, outputs


def main():
  args = common.parser(__doc__, {"mdt": MDT, "edt": EDT}).parse_args()
  common.verify_checkout(args.mdt, *MDT, ["masked_diffusion/models.py"])
  common.verify_checkout(args.edt, *EDT, ["other_models/models_mdt_with_amm.py"])
  params, outputs = make(args.mdt, args.edt)
  tol = {"std0p02/out/": 1e-5, "std0p1/out/": 1e-5, "std0p1/act/": 1e-5, "amm/out": 1e-5}
  tol.update({f"masked/seed{s}/{k}": 1e-5 for s in MASK_SEEDS for k in ("out", "encoder")})
  ok = [common.save_or_check(args.out / "mdt_tiny_params.npz", params, args.check),
        common.save_or_check(args.out / "mdt_tiny_outputs.npz", outputs, args.check, tol)]
  common.finish(ok)


if __name__ == "__main__":
  main()
