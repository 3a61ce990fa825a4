"""Official EDT (xinwangChen/EDT ``models_edt.py``) state dict → jdpm ``EDT`` variables.

The official module tree maps one to one onto jdpm's (``blocks.3.attn.rel_pos_bias.
relative_position_bias_table`` → ``blocks_3/attn/rel_pos_bias/relative_position_bias_table``).
The five frozen sin-cos tables (``pos_embed``, ``down_blocks.<k>.pos_embed``,
``concat_blocks.<k>.pos_embed``) are constants in jdpm: they are checked, not loaded. Relative
position indices, when a checkpoint stores them, are checked against jdpm's as well.
"""

import numpy as np

from jdpm.convert.dit import check_frozen_pos_embed
from jdpm.convert.mapping import map_state_dict
from jdpm.models.edt import sincos_table
from jdpm.models.relative_position import relative_position_index


def _frozen_tables(model):
  """{official key: expected (1, N, D) float64 table} of the model's fixed sin-cos tables."""
  grids, dims = model.stage_grid_sizes(), model.dims
  tables = {"pos_embed": (dims[0], grids[0])}
  for k in range(model.num_down):
    tables[f"down_blocks.{k}.pos_embed"] = (dims[k + 1], grids[k + 1])
    stage = model.num_down + 1 + k
    tables[f"concat_blocks.{k}.pos_embed"] = (dims[stage], grids[stage])
  return {key: np.asarray(sincos_table(width, grid), np.float64)
          for key, (width, grid) in tables.items()}


def convert_edt(state_dict, model, target):
  """Converts an official EDT state dict.

  Args:
    state_dict: {torch key: numpy array}.
    model: the jdpm ``EDT`` module the weights are for.
    target: abstract variables of ``model`` ({"params": ...}).

  Returns:
    {"params": nested dict of numpy arrays}.
  """
  state_dict = dict(state_dict)
  problems = []
  for key, expected in _frozen_tables(model).items():
    problems += check_frozen_pos_embed(state_dict.pop(key, None), expected, key)
  grids = model.block_grid_sizes()
  for key in [k for k in state_dict if k.endswith("relative_position_index")]:
    index = np.asarray(state_dict.pop(key))
    block = key.split(".")[1] if key.startswith("blocks.") else ""
    if block.isdigit() and int(block) < len(grids):
      expected = relative_position_index(grids[int(block)])
      if index.shape != expected.shape or not np.array_equal(index, expected):
        problems.append(f"{key} differs from the relative position index of a "
                        f"{grids[int(block)]}x{grids[int(block)]} grid")
  name = (f"EDT(hidden_size={model.hidden_size}, dims={tuple(model.dims)}, "
          f"stages_depth={tuple(model.stages_depth)}, patch_size={model.patch_size}, "
          f"num_classes={model.num_classes}, learn_sigma={model.learn_sigma})")
  params = map_state_dict(state_dict, target["params"], model_name=name, extra_errors=problems)
  return {"params": params}
