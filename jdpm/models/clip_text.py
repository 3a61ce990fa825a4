"""CLIP's causal text transformer (transformers' ``CLIPTextModel``) in Flax: Stable Diffusion's text encoder.

Token + learned position embeddings, pre-LN transformer layers with causal self-attention and a
quick-GELU (OpenAI CLIP, SD 1.x) or GELU (OpenCLIP, SD 2.x) MLP, and a final LayerNorm. Submodule
names follow the transformers state dict (``encoder.layers.3.self_attn.q_proj`` becomes
``encoder/layers_3/self_attn/q_proj``), so ``jdpm.convert.from_diffusers`` is a rename.

``model.apply(variables, input_ids)`` returns a dict:
  - "last_hidden_state" (B, L, D): after the final LayerNorm (SD 1.x's UNet context),
  - "penultimate_hidden_state" (B, L, D): the output of the second-to-last layer, without the
    final LayerNorm (transformers' ``hidden_states[-2]``; "clip skip"),
  - "pooled" (B, D): the last hidden state at the end-of-text token.

Tokenisation uses transformers' ``CLIPTokenizer`` reading a folder (``load_tokenizer``, an
optional dependency); the folder's tokenizer config fixes the padding token (EOS for SD 1.x, "!"
= id 0 for SD 2.x).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdpm.models import layers

Dtype = Any

# transformers' activation names (``hidden_act``).
ACTIVATIONS = {"quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
               "gelu": lambda x: nn.gelu(x, approximate=False),
               "gelu_new": lambda x: nn.gelu(x, approximate=True),
               "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True)}
# transformers picks the pooled position by argmax(input_ids) for configs made before eos_token_id
# was set correctly (the released OpenAI/OpenCLIP configs say eos_token_id=2; EOS is the largest id).
LEGACY_EOS_TOKEN_ID = 2


class CLIPTextEmbeddings(nn.Module):
  """Token embedding + learned absolute position embedding (positions 0..L-1)."""
  vocab_size: int
  hidden_size: int
  max_position_embeddings: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids):
    """input_ids: (B, L) → (B, L, hidden_size)."""
    embed = lambda n, name: nn.Embed(n, self.hidden_size, dtype=self.dtype, name=name)
    positions = embed(self.max_position_embeddings, "position_embedding")(jnp.arange(input_ids.shape[1]))
    return embed(self.vocab_size, "token_embedding")(input_ids) + positions[None]


class CLIPAttention(nn.Module):
  """Multi-head self-attention with q/k/v/out projections (all with biases)."""
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, bias):
    """x: (B, L, D), bias: additive logit bias broadcastable to (B, 1, L, L) → (B, L, D)."""
    b, length, dim = x.shape
    head_dim = dim // self.num_heads
    proj = lambda name: nn.Dense(dim, dtype=self.dtype, name=name)
    split = lambda a: a.reshape(b, length, self.num_heads, head_dim)
    q, k, v = split(proj("q_proj")(x)), split(proj("k_proj")(x)), split(proj("v_proj")(x))
    out = jax.lax.platform_dependent(
        cpu=lambda: layers.explicit_attention(q, k, v, bias),
        default=lambda: jax.nn.dot_product_attention(q, k, v, bias=bias.astype(q.dtype)))
    return proj("out_proj")(out.reshape(b, length, dim))


class CLIPMLP(nn.Module):
  intermediate_size: int
  hidden_act: str = "quick_gelu"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"Unknown hidden_act {self.hidden_act!r}; known: {sorted(ACTIVATIONS)}.")
    h = nn.Dense(self.intermediate_size, dtype=self.dtype, name="fc1")(x)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(ACTIVATIONS[self.hidden_act](h))


class CLIPEncoderLayer(nn.Module):
  """x += attn(LN(x)); x += mlp(LN(x))."""
  num_heads: int
  intermediate_size: int
  hidden_act: str
  layer_norm_eps: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, bias):
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, use_fast_variance=False,
                                     dtype=self.dtype, name=name)
    x = x + CLIPAttention(self.num_heads, self.dtype, name="self_attn")(norm("layer_norm1")(x), bias)
    mlp = CLIPMLP(self.intermediate_size, self.hidden_act, self.dtype, name="mlp")
    return x + mlp(norm("layer_norm2")(x))


class CLIPEncoder(nn.Module):
  num_hidden_layers: int
  num_heads: int
  intermediate_size: int
  hidden_act: str
  layer_norm_eps: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, bias):
    """Returns the hidden states: the input then each layer's output (num_hidden_layers + 1)."""
    states = [x]
    for i in range(self.num_hidden_layers):
      x = CLIPEncoderLayer(self.num_heads, self.intermediate_size, self.hidden_act,
                           self.layer_norm_eps, self.dtype, name=f"layers_{i}")(x, bias)
      states.append(x)
    return states


class CLIPTextModel(nn.Module):
  """transformers' ``CLIPTextModel``; attribute names are its config's.

  Attributes:
    vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
    max_position_embeddings, hidden_act ("quick_gelu" or "gelu"), layer_norm_eps: as the config.
    eos_token_id: end-of-text id; 2 means "legacy": the pooled position is argmax(input_ids), as
      transformers does; otherwise the first position holding eos_token_id.
    bos_token_id, pad_token_id: kept for tokenisation and reference (not used by the network).
    dtype: computation dtype (parameters stay float32).
  """
  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  bos_token_id: int = 49406
  eos_token_id: int = 49407
  pad_token_id: int = 1
  dtype: Dtype = jnp.float32

  def pooled_positions(self, input_ids):
    """(B,) index of the end-of-text token of each sequence."""
    if self.eos_token_id == LEGACY_EOS_TOKEN_ID:
      return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax(input_ids == self.eos_token_id, axis=-1)

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, output_hidden_states=False):
    """Encodes token ids.

    Args:
      input_ids: (B, L) int token ids, L ≤ max_position_embeddings.
      attention_mask: optional (B, L) 1/0 padding mask (SD does not pass one).
      output_hidden_states: also return "hidden_states", the embeddings and every layer's output.

    Returns:
      dict "last_hidden_state" (B, L, D), "penultimate_hidden_state" (B, L, D), "pooled" (B, D).
    """
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}.")
    length = input_ids.shape[1]
    if length > self.max_position_embeddings:
      raise ValueError(f"Sequence length {length} exceeds max_position_embeddings="
                       f"{self.max_position_embeddings}.")
    x = CLIPTextEmbeddings(self.vocab_size, self.hidden_size, self.max_position_embeddings,
                           self.dtype, name="embeddings")(input_ids)
    # Causal mask (each token sees itself and earlier tokens), plus optional padding mask.
    allowed = jnp.tril(jnp.ones((length, length), bool))[None, None]
    if attention_mask is not None:
      allowed = allowed & jnp.asarray(attention_mask).astype(bool)[:, None, None, :]
    bias = jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min)
    states = CLIPEncoder(self.num_hidden_layers, self.num_attention_heads, self.intermediate_size,
                         self.hidden_act, self.layer_norm_eps, self.dtype, name="encoder")(x, bias)
    last = nn.LayerNorm(epsilon=self.layer_norm_eps, use_fast_variance=False, dtype=self.dtype,
                        name="final_layer_norm")(states[-1])
    pooled = last[jnp.arange(last.shape[0]), self.pooled_positions(input_ids)]
    out = {"last_hidden_state": last, "penultimate_hidden_state": states[-2], "pooled": pooled}
    if output_hidden_states:
      out["hidden_states"] = tuple(states)
    return out


# SD 1.x: OpenAI CLIP ViT-L/14's text tower (openai/clip-vit-large-patch14, the "text_encoder"
# folder of stable-diffusion-v1-5): 123,060,480 parameters.
SD1_CLIP_L14 = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                    layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1)
# SD 2.x: OpenCLIP ViT-H/14's text tower as stable-diffusion-2(-1) ships it, with the last of its 24
# layers dropped (SD 2.x conditions on the penultimate layer): 340,387,840 parameters.
SD2_OPENCLIP_H14 = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                        num_hidden_layers=23, num_attention_heads=16, max_position_embeddings=77,
                        hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2,
                        pad_token_id=1)

PRESETS = {
    "CLIP-L/14-text": SD1_CLIP_L14,
    "OpenCLIP-H/14-text": SD2_OPENCLIP_H14,
    # A tiny tower for CPU tests and toy text-to-image training.
    "CLIP-text-tiny": dict(vocab_size=49408, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, hidden_act="quick_gelu",
                           bos_token_id=0, eos_token_id=2, pad_token_id=1),
}


def create(name, **kwargs):
  """``CLIPTextModel`` from a preset name ("CLIP-L/14-text", "OpenCLIP-H/14-text", ...)."""
  if name not in PRESETS:
    raise ValueError(f"Unknown CLIP text preset {name!r}; known: {sorted(PRESETS)}.")
  return CLIPTextModel(**{**PRESETS[name], **kwargs})


def abstract_variables(model):
  """``model.init`` evaluated abstractly (ShapeDtypeStructs)."""
  ids = jax.ShapeDtypeStruct((1, model.max_position_embeddings), jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), ids)


def load_tokenizer(folder):
  """transformers' ``CLIPTokenizer`` from a folder with ``vocab.json`` and ``merges.txt``.

  Needs the optional dependency ``transformers`` (``pip install jdpm[text]``); nothing is
  downloaded.
  """
  try:
    from transformers import CLIPTokenizer  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("Tokenising prompts needs transformers' CLIPTokenizer: pip install "
                      "'transformers>=4.40' (or jdpm[text]). Alternatively pass token ids.") from e
  return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def tokenize(tokenizer, prompts, max_length=None):
  """Prompts → (B, max_length) int32 ids, padded and truncated as Stable Diffusion pipelines do.

  Padding uses the tokenizer's own pad token (its folder's config decides), to ``max_length``
  (default: the tokenizer's ``model_max_length``, 77).
  """
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)
  max_length = max_length or tokenizer.model_max_length
  ids = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                  return_tensors="np")["input_ids"]
  return np.asarray(ids, np.int32)


__all__ = ["CLIPTextModel", "PRESETS", "abstract_variables", "create", "load_tokenizer", "tokenize"]
