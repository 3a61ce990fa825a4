"""EDT: the Efficient Diffusion Transformer (Chen et al., NeurIPS 2024).

A U-shaped, class-conditional transformer denoiser over the patch tokens of an NHWC latent. With
the usual 5 stages and 16×16 input tokens the stages see 16×16, 8×8, 4×4, 8×8 and 16×16 tokens
with widths D0·(1, 4/3, 5/3, 4/3, 1):

  patch embed + sin-cos pos → stage 0 → down → stage 1 → down → stage 2
      → up → fuse(skip of stage 1's input) → stage 3 → up → fuse(skip of stage 0's input) → stage 4
      → adaLN final layer → unpatchify.

* Every block is a DiT adaLN-Zero block whose attention adds a learnable relative position bias.
* Down-sampling (``DownSample``): merge each 2×2 token group into one 4C-wide token, LayerNorm
  modulated by the condition ("token information enhancement"), a bias-free Linear to the next
  width, then the fixed sin-cos position table of the smaller grid is added again ("positional
  encoding supplement").
* Up-sampling (``UpSample``): a bias-free Linear to 4× the next width, then a 2× pixel shuffle.
* Long skips (``ConcatLayer``): the input of each down stage is kept and fused after the
  matching up-sampling: concat([up, skip]) → modulated LayerNorm → Linear → + sin-cos table.
* The Attention Modulation Matrix (``jdpm.models.amm``) is an apply-time switch, ``amm=True``,
  for the blocks in ``amm_blocks``.
* Masked training (``jdpm.training.edt_masking``): explicit keep masks for the down-sampling modules
  (``down_keep``) and for the position-embedding replacement in the first stage (``mid_keep``).

Submodule and parameter names follow the official state dict (``blocks_<i>``, ``down_blocks_<k>``,
``up_blocks_<k>``, ``concat_blocks_<k>``, ...); the fixed sin-cos tables are constants, not
parameters.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jdpm.models import amm as amm_lib
from jdpm.models import dit
from jdpm.models import layers
from jdpm.models.relative_position import RelativePositionAttention

Dtype = Any

# The official AMM arrangement of each released stage split (global block indices).
OFFICIAL_AMM_BLOCKS = {
    (2, 2, 2, 3, 3): amm_lib.EDT_SB_AMM_BLOCKS,  # EDT-S/2, EDT-B/2.
    (6, 4, 4, 7, 7): amm_lib.EDT_XL_AMM_BLOCKS,  # EDT-XL/2 as released.
    (6, 6, 4, 6, 6): amm_lib.EDT_XL_AMM_BLOCKS,  # EDT-XL/2 with the paper's 12/12/4 split.
}


def sincos_table(width, grid_size, dtype=jnp.float32):
  """The fixed (1, grid_size², width) 2-D sin-cos position table."""
  return jnp.asarray(layers.get_2d_sincos_pos_embed(width, grid_size), dtype)[None]


def grid_side(tokens):
  """Side n of the square token grid of (B, n², C) tokens."""
  side = math.isqrt(tokens.shape[1])
  if side * side != tokens.shape[1]:
    raise ValueError(f"Expected a square token grid, got {tokens.shape[1]} tokens.")
  return side


def merge_2x2(tokens):
  """Token merge: (B, n², C) → (B, (n/2)², 4C), row-major grids, n even.

  The 4C features of an output token are the C features of its 2×2 group in the order
  (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1) (the reference's order).
  """
  batch, _, channels = tokens.shape
  n = grid_side(tokens)
  if n % 2:
    raise ValueError(f"Cannot merge 2x2 groups of a {n}x{n} token grid: the side must be even.")
  x = tokens.reshape(batch, n // 2, 2, n // 2, 2, channels)  # (B, r, row offset, c, col offset, C)
  x = x.transpose(0, 1, 3, 4, 2, 5)                          # (B, r, c, col offset, row offset, C)
  return x.reshape(batch, (n // 2) ** 2, 4 * channels)


def pixel_shuffle_2x(tokens):
  """(B, n², 4C) → (B, (2n)², C): each token's features, ordered (row offset, col offset, C),
  become its 2×2 group of output tokens."""
  batch, _, features = tokens.shape
  n = grid_side(tokens)
  channels = features // 4
  x = tokens.reshape(batch, n, n, 2, 2, channels)  # (B, r, c, row offset, col offset, C)
  x = x.transpose(0, 1, 3, 2, 4, 5)                # (B, r, row offset, c, col offset, C)
  return x.reshape(batch, 4 * n * n, channels)


def _adaln(c, width, name, dtype):
  """(shift, scale), each (B, width), from a Linear on SiLU(c)."""
  mod = nn.Dense(2 * width, dtype=dtype, kernel_init=layers.xavier_uniform, name=name)(nn.silu(c))
  return jnp.split(mod, 2, axis=-1)


class EDTBlock(dit.DiTBlock):
  """DiT adaLN-Zero block whose attention has a learnable relative position bias.

  ``hidden_size`` is the stage width; the condition ``c`` may have a different width (D0).
  """

  def attention(self):
    return RelativePositionAttention(self.num_heads, dtype=self.dtype, name="attn")


class DownSample(nn.Module):
  """2×2 token merge → condition-modulated LayerNorm → bias-free Linear → + sin-cos table.

  Attributes:
    out_size: output width.
  """
  out_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, c, keep=None):
    """x: (B, n², C), c: (B, D0) → (B, (n/2)², out_size).

    ``keep``: optional (B, n²) mask of the input tokens (1 keep, 0 drop). As in the reference,
    a dropped token's C features are zeroed after the modulated LayerNorm, so they do not reach
    the reduction; the LayerNorm statistics of its merged 4C vector still include them.
    """
    merged = merge_2x2(x)
    shift, scale = _adaln(c, merged.shape[-1], "adaLN_modulation_1", self.dtype)
    h = layers.modulate(layers.layer_norm(name="norm")(merged), shift, scale)
    if keep is not None:
      keep = jnp.asarray(keep)
      if keep.shape != x.shape[:2]:
        raise ValueError(f"A down-sampling keep mask must have shape {x.shape[:2]} (batch, "
                         f"input tokens), got {keep.shape}.")
      keep = merge_2x2(keep[..., None].astype(h.dtype))  # (B, N/4, 4)
      h = h * jnp.repeat(keep, x.shape[-1], axis=-1)
    h = nn.Dense(self.out_size, use_bias=False, dtype=self.dtype,
                 kernel_init=layers.xavier_uniform, name="reduction")(h)
    return h + sincos_table(self.out_size, grid_side(h), h.dtype)


class UpSample(nn.Module):
  """Bias-free Linear to 4·out_size, then a 2× pixel shuffle: (B, n², C) → (B, (2n)², out_size)."""
  out_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(4 * self.out_size, use_bias=False, dtype=self.dtype,
                 kernel_init=layers.xavier_uniform, name="expand")(x)
    return pixel_shuffle_2x(x)


class ConcatLayer(nn.Module):
  """Long-skip fusion: (B, N, 2C) = concat([up, skip]) → modulated LayerNorm → Linear to C →
  + sin-cos table.

  Attributes:
    hidden_size: C, the stage width.
  """
  hidden_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, c):
    shift, scale = _adaln(c, 2 * self.hidden_size, "adaLN_modulation_1", self.dtype)
    h = layers.modulate(layers.layer_norm(name="norm_final")(x), shift, scale)
    h = nn.Dense(self.hidden_size, dtype=self.dtype, kernel_init=layers.xavier_uniform,
                 name="cat")(h)
    return h + sincos_table(self.hidden_size, grid_side(h), h.dtype)


class EDT(nn.Module, layers.PatchDenoiserGeometry):
  """Efficient Diffusion Transformer; attribute names follow the official constructor (the
  defaults give EDT-S/2 on 32×32×4 latents with 1000 classes).

  Attributes:
    input_size: latent side H = W.
    patch_size: p; the first stage sees (input_size / p)² tokens.
    in_channels: latent channels C.
    hidden_size: D0, the width of the first and last stage and of the condition vector.
    depth: optional total number of blocks; checked against ``sum(stages_depth)`` (the official
      constructor takes it too).
    num_heads: heads per stage.
    mlp_ratio: MLP expansion of every block.
    class_dropout_prob: train-time label dropout; > 0 also adds the null class ``num_classes``.
    num_classes: number of real classes.
    learn_sigma: output 2C channels (ε then the variance interpolation) instead of C.
    stages_depth: blocks per stage; an odd number of stages, the first half followed by a
      down-sampling, the second half preceded by an up-sampling and a long-skip fusion.
    dims: width per stage; symmetric (dims[s] == dims[-1 - s]) with dims[0] == hidden_size.
    amm_blocks: global indices (0-based, all blocks in forward order) of the blocks that apply
      the Attention Modulation Matrix when called with ``amm=True``. None means the official
      arrangement of the stage split (``OFFICIAL_AMM_BLOCKS``: (7, 10) for S/B, (23, 25) for
      XL), and no AMM block for other splits.
    mid_mask_block: in masked training, the tokens dropped by ``mid_keep`` are replaced by the
      position table before this block of the first stage (the fifth block, as the reference).
    dtype: computation dtype (parameters stay float32).
    remat: rematerialise each block in the backward pass.
  """
  input_size: int = 32
  patch_size: int = 2
  in_channels: int = 4
  hidden_size: int = 312
  depth: int | None = None
  num_heads: Sequence[int] = (6, 8, 10, 8, 6)
  mlp_ratio: float = 4.0
  class_dropout_prob: float = 0.1
  num_classes: int = 1000
  learn_sigma: bool = True
  stages_depth: Sequence[int] = (2, 2, 2, 3, 3)
  dims: Sequence[int] = (312, 416, 520, 416, 312)
  amm_blocks: Sequence[int] | None = None
  mid_mask_block: int = 4
  dtype: Dtype = jnp.float32
  remat: bool = False

  def __post_init__(self):
    # Sequences from configs may be lists; tuples keep the module hashable and comparable.
    for name in ("num_heads", "stages_depth", "dims", "amm_blocks"):
      value = getattr(self, name)
      if value is not None and not isinstance(value, tuple):
        object.__setattr__(self, name, tuple(value))
    super().__post_init__()

  # ------------------------------------------------------------------------------------------
  # Geometry.
  # ------------------------------------------------------------------------------------------

  @property
  def num_stages(self):
    return len(self.stages_depth)

  @property
  def num_down(self):
    """Number of down-sampling (and of up-sampling) modules."""
    return self.num_stages // 2

  @property
  def total_depth(self):
    return sum(self.stages_depth)

  def stage_grid_sizes(self):
    """Token-grid side of every stage, e.g. (16, 8, 4, 8, 16)."""
    down = [self.grid_size // 2**s for s in range(self.num_down + 1)]
    return tuple(down + down[-2::-1])

  def block_grid_sizes(self):
    """Token-grid side seen by every block, in forward order."""
    return tuple(g for g, n in zip(self.stage_grid_sizes(), self.stages_depth) for _ in range(n))

  def down_grid_sizes(self):
    """Token-grid side at the input of each down-sampling module (the ``down_keep`` masks)."""
    return self.stage_grid_sizes()[: self.num_down]

  def resolved_amm_blocks(self):
    """The validated, sorted AMM block indices (see ``amm_blocks``)."""
    blocks = self.amm_blocks
    if blocks is None:
      blocks = OFFICIAL_AMM_BLOCKS.get(tuple(self.stages_depth), ())
    return amm_lib.check_amm_blocks(blocks, self.total_depth,
                                    f"this EDT (stages_depth={tuple(self.stages_depth)})")

  def pos_embed(self):
    """The frozen (1, N, D0) sin-cos table of the first stage."""
    return sincos_table(self.hidden_size, self.grid_size)

  def _check_config(self):
    stages = self.num_stages
    if stages % 2 == 0:
      raise ValueError(f"EDT needs an odd number of stages, got stages_depth="
                       f"{tuple(self.stages_depth)}.")
    if not (len(self.dims) == len(self.num_heads) == stages):
      raise ValueError(f"dims ({len(self.dims)}), num_heads ({len(self.num_heads)}) and "
                       f"stages_depth ({stages}) must have one entry per stage.")
    if min(self.stages_depth) < 0:
      raise ValueError(f"stages_depth must be non-negative, got {tuple(self.stages_depth)}.")
    if self.depth is not None and self.depth != self.total_depth:
      raise ValueError(f"depth={self.depth} but sum(stages_depth)={self.total_depth}.")
    if tuple(self.dims) != tuple(self.dims[::-1]) or self.dims[0] != self.hidden_size:
      raise ValueError(f"dims must be symmetric and start with hidden_size={self.hidden_size} "
                       f"(the long skips concatenate equal widths), got {tuple(self.dims)}.")
    for width, heads in zip(self.dims, self.num_heads):
      if width % heads:
        raise ValueError(f"Stage width {width} is not a multiple of its num_heads={heads}.")
    if self.input_size % self.patch_size:
      raise ValueError(f"input_size={self.input_size} is not a multiple of "
                       f"patch_size={self.patch_size}.")
    if self.grid_size % 2**self.num_down:
      raise ValueError(f"The {self.grid_size}x{self.grid_size} token grid cannot be halved "
                       f"{self.num_down} times: choose input_size/patch_size divisible by "
                       f"{2**self.num_down}.")

  # ------------------------------------------------------------------------------------------
  # Forward.
  # ------------------------------------------------------------------------------------------

  @nn.compact
  def __call__(self, x, t, y, train=False, force_drop_ids=None, amm=False, down_keep=None,
               mid_keep=None):
    """Predicts ε (and the variance interpolation when ``learn_sigma``).

    Args:
      x: (B, H, W, C) noisy latents, H = W = input_size, C = in_channels.
      t: (B,) timesteps (0..999 for the usual 1000-step DDPM time).
      y: (B,) int class labels in [0, num_classes]; num_classes is the null class.
      train: enables label dropout (needs ``rngs={"dropout": key}`` when class_dropout_prob > 0).
      force_drop_ids: optional (B,) ints; 1 replaces the label by the null class.
      amm: apply the Attention Modulation Matrix in the ``amm_blocks`` (a sampling-time switch,
        off by default; the reference applies it in eval mode of models built with AMM).
      down_keep: optional sequence with one entry per down-sampling module: None, or a (B, n²)
        keep mask (1 keep, 0 drop) of that module's input tokens (``down_grid_sizes()``).
      mid_keep: optional (B, N) keep mask of the first stage's tokens; dropped tokens are
        replaced by the position table before block ``mid_mask_block`` (EDT-XL training).

    Returns:
      (B, H, W, 2C) when learn_sigma else (B, H, W, C).
    """
    self._check_config()
    amm_blocks = self.resolved_amm_blocks()
    if amm and not amm_blocks:
      raise ValueError(f"amm=True but this EDT has no AMM blocks (no official arrangement for "
                       f"stages_depth={tuple(self.stages_depth)}): create it with "
                       "amm_blocks=[...].")
    down_keep = self._check_down_keep(down_keep)
    if mid_keep is not None and not 0 <= self.mid_mask_block < self.stages_depth[0]:
      raise ValueError(f"mid_keep replaces tokens before block {self.mid_mask_block} of the first "
                       f"stage, which has only {self.stages_depth[0]} blocks.")
    t, y = jnp.asarray(t), jnp.asarray(y)
    dit.check_input_shapes(x, t, y, input_size=self.input_size, in_channels=self.in_channels)

    d0 = self.hidden_size
    pos_embed = self.pos_embed().astype(self.dtype)
    tokens = layers.PatchEmbed(self.patch_size, d0, dtype=self.dtype, name="x_embedder")(x)
    tokens = tokens + pos_embed
    t_emb = layers.TimestepEmbedder(d0, dtype=self.dtype, name="t_embedder")(t)
    y_emb = layers.LabelEmbedder(self.num_classes, d0, self.class_dropout_prob, dtype=self.dtype,
                                 name="y_embedder")(y, train, force_drop_ids)
    c = t_emb + y_emb

    block_cls = nn.remat(EDTBlock) if self.remat else EDTBlock
    skips, block = [], 0
    for stage, (width, heads, depth) in enumerate(zip(self.dims, self.num_heads,
                                                      self.stages_depth)):
      if stage < self.num_down:
        skips.append(tokens)  # The stage's input, never masked.
      if stage > self.num_down:
        k = stage - self.num_down - 1
        tokens = UpSample(width, dtype=self.dtype, name=f"up_blocks_{k}")(tokens)
        tokens = jnp.concatenate([tokens, skips.pop()], axis=-1)
        tokens = ConcatLayer(width, dtype=self.dtype, name=f"concat_blocks_{k}")(tokens, c)
      for j in range(depth):
        if stage == 0 and j == self.mid_mask_block and mid_keep is not None:
          keep = jnp.asarray(mid_keep).astype(bool)[..., None]
          tokens = jnp.where(keep, tokens, pos_embed)
        modulation = None
        if amm and block in amm_blocks:
          modulation = amm_lib.modulation_matrix(grid_side(tokens), xp=jnp)
        tokens = block_cls(width, heads, self.mlp_ratio, dtype=self.dtype,
                           name=f"blocks_{block}")(tokens, c, modulation)
        block += 1
      if stage < self.num_down:
        tokens = DownSample(self.dims[stage + 1], dtype=self.dtype,
                            name=f"down_blocks_{stage}")(tokens, c, down_keep[stage])

    tokens = dit.FinalLayer(d0, self.patch_size, self.out_channels, dtype=self.dtype,
                            name="final_layer")(tokens, c)
    return layers.unpatchify(tokens, self.patch_size, self.out_channels)

  def _check_down_keep(self, down_keep):
    if down_keep is None:
      return (None,) * self.num_down
    down_keep = tuple(down_keep)
    if len(down_keep) != self.num_down:
      raise ValueError(f"down_keep needs one entry (a mask or None) per down-sampling module "
                       f"({self.num_down}), got {len(down_keep)}.")
    return down_keep

  def forward_with_cfg(self, x, t, y, cfg_scale, guided_channels=3, amm=False):
    """Classifier-free guided forward, exactly as ``DiT.forward_with_cfg`` (official convention).

    Use as ``model.apply(variables, x, t, y, s, amm=True, method="forward_with_cfg")``.
    """
    return dit.glide_forward(self, x, t, y, cfg_scale, guided_channels, amm=amm)


def _preset(width, stages_depth):
  dims = tuple(int(round(width * m)) for m in (1, 4 / 3, 5 / 3, 4 / 3, 1))
  return dict(hidden_size=width, dims=dims, num_heads=tuple(d // 52 for d in dims),
              stages_depth=tuple(stages_depth), patch_size=2)


# Official EDT configurations (head dimension 52). "EDT-XL/2" is the released code's split
# (6, 4, 4, 7, 7) = 13/11/4 blocks at 16×16/8×8/4×4 tokens; "EDT-XL/2-paper" is a 12/12/4 split,
# which reproduces the paper's 708.44 M parameters and 51.83 G MACs.
PRESETS = {
    "EDT-S/2": _preset(312, (2, 2, 2, 3, 3)),
    "EDT-B/2": _preset(624, (2, 2, 2, 3, 3)),
    "EDT-XL/2": _preset(936, (6, 4, 4, 7, 7)),
    "EDT-XL/2-paper": _preset(936, (6, 6, 4, 6, 6)),
}
