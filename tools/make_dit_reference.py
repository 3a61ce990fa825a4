"""Regenerates tests/data/dit_tiny.npz and dit_tiny_std0p1.npz from the official DiT code.

Needs torch and timm (DiT's attention and patch embedding come from timm), and a checkout of
github.com/facebookresearch/DiT at commit ed81ce2229091fd4ecc9a223645f95cf379d582b:

  python tools/make_dit_reference.py --dit /path/to/DiT [--check]

The tiny model is ``DiT(input_size=32, patch_size=2, in_channels=4, hidden_size=64, depth=2,
num_heads=4, num_classes=10, learn_sigma=True)`` in eval mode. ``pos_embed`` (the frozen sin-cos
table) is kept, every other entry is random (see tools/official_common.py); std 0.02 gives
dit_tiny.npz, std 0.1 gives dit_tiny_std0p1.npz, which also holds the submodule outputs
``act/*`` (batch element 0 of the plain forward). Keys: ``param/<state-dict name>`` (PyTorch
layout), ``input/*``, ``out/forward``, ``out/cfg1.5`` (``forward_with_cfg`` on the CFG batch),
``meta/*``. ``--check``: parameters and inputs bit-exact, outputs within
``common.NETWORK_TOL`` (bit-exact on the CPU that made them).
"""

import official_common as common

DIT = ("facebookresearch/DiT", "ed81ce2229091fd4ecc9a223645f95cf379d582b")
TINY = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4,
            mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True)
CFG_SCALE = 1.5
ACTIVATIONS = ["x_embedder", "t_embedder", "y_embedder", "blocks.0", "blocks.1", "final_layer"]


def make(checkout, std):
  import torch  # pylint: disable=import-outside-toplevel
  with common.on_path(checkout):
    models = common.load_module(checkout, "models.py", "dit_official_models")
    model = models.DiT(**TINY).eval()
  params = common.randomise(model, std, keep={"pos_embed"})
  arrays = {f"param/{k}": v for k, v in params.items()}
  inputs = common.network_inputs()
  arrays.update(inputs)
  x, t, y = (torch.from_numpy(inputs[f"input/{k}"]) for k in "xty")
  with torch.no_grad():
    with common.capture(model, ACTIVATIONS) as act:
      arrays["out/forward"] = common.to_numpy(model(x, t, y))
    arrays[f"out/cfg{CFG_SCALE}"] = common.to_numpy(model.forward_with_cfg(
        torch.from_numpy(inputs["input/x_cfg"]), torch.from_numpy(inputs["input/t_cfg"]),
        torch.from_numpy(inputs["input/y_cfg"]), CFG_SCALE))
  if std == 0.1:
    arrays.update({f"act/{k}": v for k, v in act.items()})
  arrays.update({"meta/param_std": float(std), "meta/param_seed": common.PARAM_SEED,
                 "meta/input_seed": common.INPUT_SEED, "meta/cfg_scale": CFG_SCALE})
  return arrays


def main():
  args = common.parser(__doc__, {"dit": DIT}).parse_args()
  common.verify_checkout(args.dit, *DIT, ["models.py"])
  ok = [common.save_or_check(args.out / name, make(args.dit, std), args.check,
                                 common.NETWORK_TOL)
        for name, std in [("dit_tiny.npz", 0.02), ("dit_tiny_std0p1.npz", 0.1)]]
  common.finish(ok)


if __name__ == "__main__":
  main()
