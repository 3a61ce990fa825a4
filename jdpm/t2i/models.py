"""The built-in text-to-image model's networks, built from a `configs/t2i.py` config.

  text encoder   `jdpm.models.clip_text.CLIPTextModel` (causal, CLIP's layout: [SOS] id 0, [EOS] id 1)
  image tower    `jdpm.models.proxy_classifier.ProxyClassifier` whose logits are the image embedding
                 (used only for the contrastive pre-training of the text encoder)
  denoiser       `jdpm.models.unet.UNet2DConditionModel` in pixel space (3 channels, noise prediction)
  proxy          `ProxyClassifier` with one logit block per canonical label head of the scenes
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jdpm.data import captioned_shapes
from jdpm.models import clip_text, proxy_classifier, unet as unet_lib
from jdpm.t2i.tokenizer import WordTokenizer

PROXY_WIDTHS = (32, 64, 128)


def tokenizer(config):
  return WordTokenizer(captioned_shapes.WORDS, config.context_length)


def text_encoder(config):
  tok = tokenizer(config)
  return clip_text.CLIPTextModel(vocab_size=tok.vocab_size, max_position_embeddings=config.context_length,
                                 bos_token_id=tok.sos_id, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id,
                                 **config.text.to_dict())


def denoiser(config):
  u = config.unet
  return unet_lib.UNet2DConditionModel(
      sample_size=config.image_size, in_channels=3, out_channels=3,
      block_out_channels=tuple(u.block_out_channels), layers_per_block=u.layers_per_block,
      down_block_types=tuple(u.down_block_types), up_block_types=tuple(u.up_block_types),
      cross_attention_dim=config.text.hidden_size, attention_head_dim=u.attention_head_dim,
      norm_num_groups=u.norm_num_groups)


class ImageTower(nn.Module):
  """Images (B, H, W, 3) in [-1, 1] → (B, embed_dim) embeddings for the contrastive loss."""
  embed_dim: int

  @nn.compact
  def __call__(self, images):
    return proxy_classifier.ProxyClassifier(self.embed_dim, widths=PROXY_WIDTHS, name="trunk")(images)[0]


def proxy():
  """Scene classifier: logits of all heads concatenated (split with `split_heads`)."""
  return proxy_classifier.ProxyClassifier(sum(len(v) for v in captioned_shapes.HEADS.values()),
                                          widths=PROXY_WIDTHS)


def split_heads(logits):
  """(B, sum of head sizes) → {head: (B, head size)} in `captioned_shapes.HEADS` order."""
  sizes = np.cumsum([len(v) for v in captioned_shapes.HEADS.values()])[:-1]
  return dict(zip(captioned_shapes.HEADS, jnp.split(logits, sizes, axis=-1)))
