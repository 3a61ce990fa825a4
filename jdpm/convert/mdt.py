"""Official MDTv2 (sail-sg/MDT ``masked_diffusion/models.py``) state dict → jdpm variables.

Every learnable tensor maps by name
(``en_inblocks.0.attn.rel_pos_bias.relative_position_bias_table`` →
``en_inblocks_0/attn/rel_pos_bias/relative_position_bias_table``; ``pos_embed``,
``decoder_pos_embed`` and ``mask_token`` are parameters in both). The integer
``relative_position_index`` buffers are derived from the grid in jdpm: when present they are
checked and dropped.
"""

import numpy as np

from jdpm.convert.mapping import map_state_dict
from jdpm.models.relative_position import relative_position_index

INDEX_SUFFIX = ".attn.rel_pos_bias.relative_position_index"


def check_relative_position_index(state_dict, grid_size):
  """Removes the ``relative_position_index`` buffers from ``state_dict`` (in place).

  Returns a list of problems (empty if none): every buffer must equal jdpm's index of the
  ``grid_size × grid_size`` grid, which the model recomputes.
  """
  expected = relative_position_index(grid_size)
  problems = []
  for key in [k for k in state_dict if k.endswith(INDEX_SUFFIX)]:
    index = np.asarray(state_dict.pop(key))
    if index.shape != expected.shape or not np.array_equal(index, expected):
      problems.append(f"{key} is not the relative position index of a {grid_size}x{grid_size} "
                      f"token grid (shape {index.shape}, expected {expected.shape})")
  return problems


def convert_mdt(state_dict, model, target):
  """Converts an official MDTv2 state dict.

  Args:
    state_dict: {torch key: numpy array}.
    model: the jdpm ``MDTv2`` module the weights are for.
    target: abstract variables of ``model`` ({"params": ...}).

  Returns:
    {"params": nested dict of numpy arrays}.
  """
  state_dict = dict(state_dict)
  problems = check_relative_position_index(state_dict, model.grid_size)
  name = (f"MDTv2(hidden_size={model.hidden_size}, depth={model.depth}, "
          f"decode_layer={model.decode_layer}, num_heads={model.num_heads}, "
          f"patch_size={model.patch_size}, num_classes={model.num_classes}, "
          f"learn_sigma={model.learn_sigma})")
  params = map_state_dict(state_dict, target["params"], model_name=name, extra_errors=problems)
  return {"params": params}
