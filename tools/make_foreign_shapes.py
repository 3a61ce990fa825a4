"""Regenerates tests/data/dit_foreign_state_dict_shapes.npz: the state-dict key names and shapes of
the official tiny MDTv2 and EDT models (the DiT converter must reject them with a clear error).

Needs torch, timm and einops, a checkout of github.com/sail-sg/MDT at commit
7d26c2162c462bd0b90f97f3a1c36cdaaac616ec and one of github.com/xinwangChen/EDT at commit
15faf9c07c7b17f1f200c54f14321a383f923c16:

  python tools/make_foreign_shapes.py --mdt /path/to/MDT --edt /path/to/EDT [--check]

Keys ``mdt/<name>`` and ``edt/<name>`` in state-dict order, each an int64 shape vector. The tiny
constructors are those of tools/make_mdt_reference.py and tools/make_edt_reference.py; MDTv2's
integer ``relative_position_index`` buffers are left out, as in mdt_tiny_params.npz. ``--check``
expects bit-exact equality.
"""

import numpy as np

import make_edt_reference
import make_mdt_reference
import official_common as common


def make(mdt_checkout, edt_checkout):
  with common.on_path(mdt_checkout):
    mdt = common.load_module(mdt_checkout, "masked_diffusion/models.py", "mdt_official_models")
    mdt_model = mdt.MDTv2(**make_mdt_reference.TINY)
  with common.on_path(edt_checkout):
    edt = common.load_module(edt_checkout, "models_edt.py", "edt_official_models")
    edt_model = edt.EDT(**make_edt_reference.TINY, local=False)
  arrays = {f"mdt/{k}": np.asarray(v.shape, np.int64) for k, v in mdt_model.state_dict().items()
            if not k.endswith(make_mdt_reference.INDEX)}
  arrays.update({f"edt/{k}": np.asarray(v.shape, np.int64)
                 for k, v in edt_model.state_dict().items()})
  return arrays


def main():
  args = common.parser(__doc__, {"mdt": make_mdt_reference.MDT,
                                 "edt": make_edt_reference.EDT}).parse_args()
  common.verify_checkout(args.mdt, *make_mdt_reference.MDT, ["masked_diffusion/models.py"])
  common.verify_checkout(args.edt, *make_edt_reference.EDT, ["models_edt.py"])
  common.finish([common.save_or_check(args.out / "dit_foreign_state_dict_shapes.npz",
                                      make(args.mdt, args.edt), args.check)])


if __name__ == "__main__":
  main()
