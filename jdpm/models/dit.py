"""DiT: the Diffusion Transformer with adaLN-Zero blocks (Peebles & Xie, 2023).

Class-conditional denoiser on NHWC latents. Submodule names follow the official state dict
(``x_embedder``, ``t_embedder``, ``y_embedder``, ``blocks_<i>``, ``final_layer``), so
``jdpm.convert.from_official`` maps released checkpoints one to one. The frozen sin-cos position
table is a constant of the model, not a parameter (as in the paper's parameter counts).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jdpm.models import amm as amm_lib
from jdpm.models import layers

Dtype = Any


def check_input_shapes(x, t, y, *, input_size, in_channels):
  """Raises ValueError unless x is (B, input_size, input_size, in_channels), t and y are (B,)."""
  expected = ("B", input_size, input_size, in_channels)
  if x.ndim != 4 or tuple(x.shape[1:]) != expected[1:]:
    raise ValueError(f"x must be NHWC with shape (B, {input_size}, {input_size}, {in_channels}), "
                     f"got {tuple(x.shape)}. Images are NHWC: transpose NCHW inputs with "
                     f"x.transpose(0, 2, 3, 1).")
  for name, value in (("t", t), ("y", y)):
    shape = tuple(getattr(value, "shape", ()))
    if shape != (x.shape[0],):
      raise ValueError(f"{name} must have shape ({x.shape[0]},) to match x's batch, got {shape}.")


class DiTBlock(nn.Module):
  """Transformer block with adaLN-Zero conditioning.

  ``x += gate_msa · attn(modulate(norm(x)))``, ``x += gate_mlp · mlp(modulate(norm(x)))`` where
  the six (B, D) shift/scale/gate vectors come from a zero-initialised Linear on SiLU(c).
  """
  hidden_size: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, c, modulation=None):
    """x: (B, N, D) tokens, c: (B, D) conditioning → (B, N, D).

    ``modulation`` is an optional post-softmax attention modulation matrix broadcastable to
    (B, H, N, N) (e.g. an Attention Modulation Matrix), passed to ``layers.Attention``.
    """
    x = layers.residual_barrier(x)
    d = self.hidden_size
    mod = nn.Dense(6 * d, dtype=self.dtype, kernel_init=layers.zeros,
                   name="adaLN_modulation_1")(nn.silu(c))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
    h = layers.modulate(layers.layer_norm(name="norm1")(x), shift_msa, scale_msa)
    x = x + gate_msa[:, None] * self.attention()(h, modulation=modulation)
    h = layers.modulate(layers.layer_norm(name="norm2")(x), shift_mlp, scale_mlp)
    mlp = layers.Mlp(int(d * self.mlp_ratio), dtype=self.dtype, name="mlp")
    return x + gate_mlp[:, None] * mlp(h)

  def attention(self):
    """The attention sub-module ``attn``; subclasses swap it (EDT adds a relative position bias)."""
    return layers.Attention(self.num_heads, dtype=self.dtype, name="attn")


class FinalLayer(nn.Module):
  """adaLN-modulated LayerNorm, then a zero-initialised Linear to p·p·out_channels per token."""
  hidden_size: int
  patch_size: int
  out_channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, c):
    """x: (B, N, D), c: (B, D) → (B, N, p·p·out_channels)."""
    mod = nn.Dense(2 * self.hidden_size, dtype=self.dtype, kernel_init=layers.zeros,
                   name="adaLN_modulation_1")(nn.silu(c))
    shift, scale = jnp.split(mod, 2, axis=-1)
    x = layers.modulate(layers.layer_norm(name="norm_final")(x), shift, scale)
    return nn.Dense(self.patch_size**2 * self.out_channels, dtype=self.dtype,
                    kernel_init=layers.zeros, name="linear")(x)


class PatchTransformer(nn.Module, layers.PatchDenoiserGeometry):
  """The constructor fields DiT and MDTv2 share, with the official names and DiT-XL/2 defaults.

  Attributes:
    input_size: latent side H = W.
    patch_size: p; the token grid is (input_size / p)².
    in_channels: latent channels C.
    hidden_size, depth, num_heads, mlp_ratio: transformer width, blocks, heads, MLP expansion.
    class_dropout_prob: train-time label dropout for classifier-free guidance; > 0 also adds
      the null class ``num_classes``.
    num_classes: number of real classes.
    learn_sigma: output 2C channels (ε then the variance interpolation v in [-1, 1] units)
      instead of C.
    amm_blocks: block indices that get EDT's Attention Modulation Matrix when called with
      ``amm=True`` (no parameters).
    dtype: computation dtype (parameters stay float32).
    remat: rematerialise each block in the backward pass (saves activation memory).
  """
  input_size: int = 32
  patch_size: int = 2
  in_channels: int = 4
  hidden_size: int = 1152
  depth: int = 28
  num_heads: int = 16
  mlp_ratio: float = 4.0
  class_dropout_prob: float = 0.1
  num_classes: int = 1000
  learn_sigma: bool = True
  amm_blocks: Sequence[int] = ()
  dtype: Dtype = jnp.float32
  remat: bool = False


class DiT(PatchTransformer):
  """Diffusion Transformer; the fields are ``PatchTransformer``'s (the official constructor's
  names; the defaults give DiT-XL/2 on 32×32×4 latents with 1000 classes). Official AMM placement
  for DiT-XL/2: ``amm_blocks=jdpm.models.amm.DIT_XL_AMM_BLOCKS`` = (15, 17, 19, 22, 24).
  """

  def pos_embed(self):
    """The frozen (1, N, D) float32 sin-cos position table."""
    table = layers.get_2d_sincos_pos_embed(self.hidden_size, self.grid_size)
    return jnp.asarray(table, jnp.float32)[None]

  def _check_config(self):
    if self.input_size % self.patch_size:
      raise ValueError(f"input_size={self.input_size} is not a multiple of "
                       f"patch_size={self.patch_size}.")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                       f"num_heads={self.num_heads}.")

  @nn.compact
  def __call__(self, x, t, y, train=False, force_drop_ids=None, amm=False):
    """Predicts ε (and the variance interpolation when ``learn_sigma``).

    Args:
      x: (B, H, W, C) noisy latents, H = W = input_size, C = in_channels.
      t: (B,) timesteps (int or float; 0..999 for the usual 1000-step DDPM time).
      y: (B,) int class labels in [0, num_classes]; num_classes is the null class.
      train: enables label dropout (needs ``rngs={"dropout": key}`` when
        class_dropout_prob > 0).
      force_drop_ids: optional (B,) ints; 1 replaces the label by the null class.
      amm: multiply the post-softmax attention of the ``amm_blocks`` by the Attention Modulation
        Matrix (``jdpm.models.amm``); a sampling-time switch, off by default.

    Returns:
      (B, H, W, 2C) when learn_sigma else (B, H, W, C).
    """
    self._check_config()
    amm_blocks = amm_lib.check_amm_blocks(self.amm_blocks, self.depth, "this DiT")
    if amm and not amm_blocks:
      raise ValueError("amm=True but this DiT has no amm_blocks: create it with e.g. "
                       "amm_blocks=jdpm.models.amm.DIT_XL_AMM_BLOCKS.")
    t, y = jnp.asarray(t), jnp.asarray(y)
    check_input_shapes(x, t, y, input_size=self.input_size, in_channels=self.in_channels)
    d = self.hidden_size
    tokens = layers.PatchEmbed(self.patch_size, d, dtype=self.dtype, name="x_embedder")(x)
    tokens = tokens + self.pos_embed().astype(tokens.dtype)
    t_emb = layers.TimestepEmbedder(d, dtype=self.dtype, name="t_embedder")(t)
    y_emb = layers.LabelEmbedder(self.num_classes, d, self.class_dropout_prob, dtype=self.dtype,
                                 name="y_embedder")(y, train, force_drop_ids)
    c = t_emb + y_emb
    block_cls = nn.remat(DiTBlock) if self.remat else DiTBlock
    for i in range(self.depth):
      modulation = (amm_lib.modulation_matrix(self.grid_size, xp=jnp) if amm and i in amm_blocks
                    else None)
      tokens = block_cls(d, self.num_heads, self.mlp_ratio, dtype=self.dtype,
                         name=f"blocks_{i}")(tokens, c, modulation)
    tokens = FinalLayer(d, self.patch_size, self.out_channels, dtype=self.dtype,
                        name="final_layer")(tokens, c)
    return layers.unpatchify(tokens, self.patch_size, self.out_channels)

  def forward_with_cfg(self, x, t, y, cfg_scale, guided_channels=3, amm=False):
    """Classifier-free guided forward on a GLIDE-style doubled batch (official convention).

    Only the first half of ``x`` is read; it is duplicated and run with the full ``t`` and ``y``
    (conditional labels first, null labels second). See ``layers.glide_guidance``.

    Args:
      x: (2B, H, W, C); rows B..2B-1 are ignored.
      t: (2B,) timesteps.
      y: (2B,) labels, typically [y, null, ..., null].
      cfg_scale: guidance scale.
      guided_channels: number of leading output channels to guide (official: 3).
      amm: as in ``__call__``.

    Returns:
      (2B, H, W, out_channels), both halves carrying the guided channels.

    Use as ``model.apply(variables, x, t, y, s, method="forward_with_cfg")``.
    """
    return glide_forward(self, x, t, y, cfg_scale, guided_channels, amm=amm)


def glide_forward(model, x, t, y, cfg_scale, guided_channels=3, **call_kwargs):
  """The official ``forward_with_cfg`` of DiT-style models (DiT, EDT): the first half of x, doubled.

  Args:
    model: a bound module called as ``model(x, t, y, **call_kwargs)``.
    x, t, y: (2B, ...) GLIDE-style doubled batch; rows B..2B-1 of x are ignored.
    cfg_scale, guided_channels: see ``layers.glide_guidance``.
  """
  if x.shape[0] % 2:
    raise ValueError(f"forward_with_cfg needs an even batch, got x of shape {tuple(x.shape)}.")
  half = x[: x.shape[0] // 2]
  model_out = model(jnp.concatenate([half, half], axis=0), t, y, **call_kwargs)
  return layers.glide_guidance(model_out, cfg_scale, guided_channels)


# Official DiT configurations: name -> architecture keyword arguments.
PRESETS = {
    f"DiT-{size}/{p}": dict(hidden_size=width, depth=depth, num_heads=heads, patch_size=p)
    for size, (width, depth, heads) in {
        "S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16),
    }.items()
    for p in (2, 4, 8)
}
