"""Official DiT (facebookresearch/DiT ``models.py``) state dict → jdpm ``DiT`` variables."""

import numpy as np

from jdpm.convert.mapping import map_state_dict

# The fixed sin-cos table may differ from jdpm's float32 recomputation only by rounding.
POS_EMBED_ATOL = 1e-4


def check_frozen_pos_embed(pos_embed, expected, key="pos_embed"):
  """Returns a list of problems (empty if none) comparing a stored frozen table to ours."""
  if pos_embed is None:
    return []  # Nothing to check: jdpm recomputes the table.
  pos_embed = np.asarray(pos_embed)
  if pos_embed.shape != expected.shape:
    return [f"{key} has shape {pos_embed.shape}, expected {expected.shape}"]
  err = float(np.max(np.abs(pos_embed.astype(np.float64) - expected)))
  if err > POS_EMBED_ATOL:
    return [f"{key} differs from the fixed 2-D sin-cos table by {err:.3g} (jdpm keeps it frozen, "
            "as the official model)"]
  return []


def convert_dit(state_dict, model, target):
  """Converts an official DiT state dict.

  Args:
    state_dict: {torch key: numpy array}.
    model: the jdpm ``DiT`` module the weights are for.
    target: abstract variables of ``model`` ({"params": ...}).

  Returns:
    {"params": nested dict of numpy arrays}.
  """
  state_dict = dict(state_dict)
  expected_pos = np.asarray(model.pos_embed(), np.float64)
  problems = check_frozen_pos_embed(state_dict.pop("pos_embed", None), expected_pos)
  name = f"DiT(hidden_size={model.hidden_size}, depth={model.depth}, patch_size=" \
         f"{model.patch_size}, num_classes={model.num_classes}, learn_sigma={model.learn_sigma})"
  params = map_state_dict(state_dict, target["params"], model_name=name, extra_errors=problems)
  return {"params": params}
