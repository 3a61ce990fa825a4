"""Writes ``tests/data/diffusers_tiny/``: tiny random diffusers/transformers folders and their outputs.

Needs torch, diffusers and transformers (jdpm itself never imports them):

  python tools/make_diffusers_reference.py [--out tests/data/diffusers_tiny]

Nothing is downloaded. Every model is built from a small config with random weights, and every
parameter is then perturbed with Gaussian noise (std 0.05; GroupNorm/LayerNorm scales around 1)
so that no zero-initialised layer hides an error. Folders are written with ``save_pretrained``
exactly as users' diffusers folders hold them:

  pipeline/            a StableDiffusionPipeline (model_index.json) with
    unet/              UNet2DConditionModel, SD 1.x layout (1×1-conv proj_in/out, one head count),
                       block_out_channels (8, 16), CrossAttnDown + Down / Up + CrossAttnUp
    text_encoder/      CLIPTextModel: hidden 16, 2 layers, GELU, vocab 1000, legacy eos_token_id 2
                       (pooled position = argmax of the ids, as the released SD configs)
    tokenizer/         CLIPTokenizer with a byte-level vocabulary and a few merges (EOS padding)
    vae/               AutoencoderKL (8, 16), saved as an fp16 variant only
                       (diffusion_pytorch_model.fp16.safetensors); the reference ran with the
                       same fp16-rounded weights in float32, so the outputs match exactly
    scheduler/         PNDMScheduler, Stable Diffusion's scaled_linear betas
  unet_sd2/            UNet2DConditionModel, SD 2.x layout (use_linear_projection, per-block
                       attention_head_dim (2, 4, 4), upcast_attention), sharded (index json)
  unet2d/              UNet2DModel: DownBlock2D + AttnDownBlock2D, scale-shift time embedding,
                       10 class embeddings, flip_sin_to_cos False and freq_shift 1 (DDPM style)

Arrays in ``reference.npz`` (images NHWC; jdpm's layout):
  prompts, input_ids        two prompts and the tokenizer's (2, 77) ids; other_ids a third prompt
  text/<out>                last_hidden_state, penultimate_hidden_state (hidden_states[-2]),
                            pooled, each for input_ids; other_last_hidden_state for other_ids
  sd1/x, sd1/t, sd1/out     pipeline UNet on (2, 8, 8, 4) latents, context = text last_hidden_state
  sd1/probs/<layer>, sd1/logits/<layer>   (B, heads, H·W, L) cross-attention probabilities and
                            pre-softmax logits recorded by an attention processor (two layers)
  sd1/swap_positions        token positions substituted by other_last_hidden_state's:
  sd1/out_swap_keys, sd1/out_swap_values   outputs with the keys / the values substituted
                            at those positions in every cross-attention layer
  sd2/x, sd2/t, sd2/out     SD 2.x-layout UNet, context = text penultimate_hidden_state
  unet2d/x, unet2d/t, unet2d/y, unet2d/out
  vae/x, vae/mean, vae/logvar, vae/decoded   encode (posterior moments) and decode(mean)
  scheduler/betas           the scheduler's betas (float64)
"""

import argparse
import json
import os
import shutil

import numpy as np
import torch
from diffusers import (AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel,
                       UNet2DModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

SEED = 1234
PROMPTS = ["a photo of a cat", "a red dog on the grass"]
OTHER_PROMPT = "a photo of a dog"
CAPTURED_LAYERS = ("down_blocks.0.attentions.0.transformer_blocks.0.attn2",
                   "mid_block.attentions.0.transformer_blocks.0.attn2")
SWAP_POSITIONS = (4, 5)  # "cat" / "dog" and the next token in the first prompt
MERGE_WORDS = ("photo", "of", "cat", "dog", "red", "on", "the", "grass")


def perturb(model, generator, std=0.05):
  """Adds N(0, std²) noise to every parameter (norm scales stay near 1)."""
  with torch.no_grad():
    for _, p in sorted(model.named_parameters()):
      p.add_(std * torch.randn(p.shape, generator=generator))
  return model.eval()


def bytes_to_unicode():
  """CLIP's reversible byte → printable unicode table (the standard GPT-2/CLIP construction)."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  chars, extra = list(printable), 0
  for b in range(256):
    if b not in printable:
      printable.append(b)
      chars.append(256 + extra)
      extra += 1
  return dict(zip(printable, map(chr, chars)))


def tiny_tokenizer(folder):
  """A CLIPTokenizer with the 512 byte-level symbols, merges spelling out MERGE_WORDS, and the
  two special tokens last (so EOS has the largest id, as in CLIP)."""
  symbols = list(bytes_to_unicode().values())
  vocab = symbols + [s + "</w>" for s in symbols]
  merges = []
  for word in MERGE_WORDS:
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
      merges.append((pieces[0], pieces[1]))
      pieces = [pieces[0] + pieces[1]] + pieces[2:]
  merges = list(dict.fromkeys(merges))
  vocab += [a + b for a, b in merges if a + b not in vocab]
  vocab += ["<|startoftext|>", "<|endoftext|>"]
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "vocab.json"), "w") as f:
    json.dump({token: i for i, token in enumerate(vocab)}, f)
  with open(os.path.join(folder, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  tokenizer = CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges,
                            model_max_length=77)
  tokenizer.save_pretrained(folder)
  return CLIPTokenizer.from_pretrained(folder)


class RecordingProcessor:
  """Plain attention (as diffusers' AttnProcessor) that records the probabilities and logits and
  can substitute the keys or values of chosen context positions with another context's."""

  def __init__(self, name, store, swap=None):
    self.name, self.store, self.swap = name, store, swap

  def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
               temb=None, **kwargs):
    batch = hidden_states.shape[0]
    query = attn.to_q(hidden_states)
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    key, value = attn.to_k(context), attn.to_v(context)
    if self.swap is not None and encoder_hidden_states is not None:
      other, positions, what = self.swap
      mask = torch.zeros(context.shape[1], dtype=torch.bool)
      mask[list(positions)] = True
      mask = mask[None, :, None]
      if what == "keys":
        key = torch.where(mask, attn.to_k(other), key)
      else:
        value = torch.where(mask, attn.to_v(other), value)
    q, k, v = (attn.head_to_batch_dim(a) for a in (query, key, value))
    logits = attn.scale * torch.bmm(q, k.transpose(-1, -2))
    probs = logits.softmax(dim=-1)
    if self.name in CAPTURED_LAYERS:
      shape = (batch, attn.heads, probs.shape[1], probs.shape[2])
      self.store[f"logits/{self.name}"] = logits.reshape(shape).numpy().copy()
      self.store[f"probs/{self.name}"] = probs.reshape(shape).numpy().copy()
    out = attn.batch_to_head_dim(torch.bmm(probs, v))
    return attn.to_out[1](attn.to_out[0](out))


def set_processors(unet, store, swap=None):
  processors = {}
  for name in unet.attn_processors:
    layer = name[:-len(".processor")]
    if layer.endswith("attn2"):
      processors[name] = RecordingProcessor(layer, store, swap)
    else:
      processors[name] = unet.attn_processors[name]
  unet.set_attn_processor(processors)


def nhwc(x):
  return x.permute(0, 2, 3, 1).numpy()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data",
                                                     "diffusers_tiny"))
  args = parser.parse_args()
  out = os.path.abspath(args.out)
  if os.path.exists(out):
    shutil.rmtree(out)
  torch.manual_seed(SEED)
  gen = torch.Generator().manual_seed(SEED)
  ref = {}

  # --- text encoder and tokenizer -----------------------------------------------------------
  tokenizer = tiny_tokenizer(os.path.join(out, "_tokenizer"))
  text_config = CLIPTextConfig(vocab_size=1000, hidden_size=16, intermediate_size=32,
                               num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                               hidden_act="gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1)
  text_encoder = perturb(CLIPTextModel(text_config), gen)
  ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True,
                  return_tensors="pt").input_ids
  other_ids = tokenizer([OTHER_PROMPT] * 2, padding="max_length", max_length=77,
                        truncation=True, return_tensors="pt").input_ids
  with torch.no_grad():
    text = text_encoder(ids, output_hidden_states=True)
    other = text_encoder(other_ids)
  ref.update({"prompts": np.array(PROMPTS), "other_prompt": np.array(OTHER_PROMPT),
              "input_ids": ids.numpy(), "other_ids": other_ids.numpy(),
              "text/last_hidden_state": text.last_hidden_state.numpy(),
              "text/penultimate_hidden_state": text.hidden_states[-2].numpy(),
              "text/pooled": text.pooler_output.numpy(),
              "text/other_last_hidden_state": other.last_hidden_state.numpy()})

  # --- SD 1.x-layout UNet with cross-attention capture and substitution -----------------------
  unet = perturb(UNet2DConditionModel(
      sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
      attention_head_dim=2, norm_num_groups=4), gen)
  x = torch.randn(2, 4, 8, 8, generator=gen)
  t = torch.tensor([10, 801])
  context = text.last_hidden_state
  store, default_processors = {}, dict(unet.attn_processors)
  with torch.no_grad():
    plain = unet(x, t, encoder_hidden_states=context).sample
    set_processors(unet, store)
    recorded = unet(x, t, encoder_hidden_states=context).sample
    swapped = {}
    for what in ("keys", "values"):
      set_processors(unet, {}, (other.last_hidden_state, SWAP_POSITIONS, what))
      swapped[what] = unet(x, t, encoder_hidden_states=context).sample
  unet.set_attn_processor(default_processors)
  assert torch.allclose(plain, recorded, atol=1e-5), "the recording processor changed the output"
  ref.update({"sd1/x": nhwc(x), "sd1/t": t.numpy(), "sd1/out": nhwc(plain),
              "sd1/swap_positions": np.array(SWAP_POSITIONS),
              "sd1/out_swap_keys": nhwc(swapped["keys"]),
              "sd1/out_swap_values": nhwc(swapped["values"])})
  ref.update({f"sd1/{k}": v for k, v in store.items()})

  # --- VAE (fp16-representable weights) --------------------------------------------------------
  vae = perturb(AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16),
                              down_block_types=("DownEncoderBlock2D",) * 2,
                              up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
                              latent_channels=4, norm_num_groups=4, sample_size=16), gen)
  with torch.no_grad():
    for p in vae.parameters():
      p.copy_(p.half().float())
    image = torch.rand(1, 3, 16, 16, generator=gen) * 2 - 1
    posterior = vae.encode(image).latent_dist
    decoded = vae.decode(posterior.mean).sample
  ref.update({"vae/x": nhwc(image), "vae/mean": nhwc(posterior.mean),
              "vae/logvar": nhwc(posterior.logvar), "vae/decoded": nhwc(decoded)})

  # --- pipeline folder ---------------------------------------------------------------------------
  scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                            num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1,
                            set_alpha_to_one=False)
  ref["scheduler/betas"] = scheduler.betas.double().numpy()
  pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                 scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                 requires_safety_checker=False)
  pipeline_dir = os.path.join(out, "pipeline")
  pipe.save_pretrained(pipeline_dir)
  # Keep the slow-tokenizer files too, as Stable Diffusion folders do (older transformers read them).
  for name in ("vocab.json", "merges.txt"):
    shutil.copy(os.path.join(out, "_tokenizer", name), os.path.join(pipeline_dir, "tokenizer", name))
  shutil.rmtree(os.path.join(out, "_tokenizer"))
  # The VAE as an fp16 variant only (as fp16 pipeline downloads hold it).
  shutil.rmtree(os.path.join(pipeline_dir, "vae"))
  vae.to(torch.float16).save_pretrained(os.path.join(pipeline_dir, "vae"), variant="fp16")

  # --- SD 2.x-layout UNet (sharded) -------------------------------------------------------------
  unet2 = perturb(UNet2DConditionModel(
      sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16),
      layers_per_block=1,
      down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
      cross_attention_dim=16, attention_head_dim=(2, 4, 4), use_linear_projection=True,
      upcast_attention=True, norm_num_groups=4), gen)
  x2 = torch.randn(2, 4, 8, 8, generator=gen)
  t2 = torch.tensor([999, 3])
  with torch.no_grad():
    out2 = unet2(x2, t2, encoder_hidden_states=text.hidden_states[-2]).sample
  unet2.save_pretrained(os.path.join(out, "unet_sd2"), max_shard_size="100KB")
  ref.update({"sd2/x": nhwc(x2), "sd2/t": t2.numpy(), "sd2/out": nhwc(out2)})

  # --- UNet2DModel -------------------------------------------------------------------------------
  unet2d = perturb(UNet2DModel(
      sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
      down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
      attention_head_dim=8, norm_num_groups=4, resnet_time_scale_shift="scale_shift",
      num_class_embeds=10, flip_sin_to_cos=False, freq_shift=1), gen)
  x3 = torch.randn(2, 3, 16, 16, generator=gen)
  t3, y3 = torch.tensor([5, 500]), torch.tensor([3, 7])
  with torch.no_grad():
    out3 = unet2d(x3, t3, class_labels=y3).sample
  unet2d.save_pretrained(os.path.join(out, "unet2d"))
  ref.update({"unet2d/x": nhwc(x3), "unet2d/t": t3.numpy(), "unet2d/y": y3.numpy(),
              "unet2d/out": nhwc(out3)})

  np.savez_compressed(os.path.join(out, "reference.npz"), **ref)
  total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
  print(f"wrote {out} ({total / 1e3:.0f} KB)")
  for d, _, fs in sorted(os.walk(out)):
    for f in sorted(fs):
      print(f"  {os.path.relpath(os.path.join(d, f), out)}: {os.path.getsize(os.path.join(d, f))} B")


if __name__ == "__main__":
  main()
