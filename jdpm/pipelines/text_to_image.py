"""Text-to-image with a Stable Diffusion folder: prompt → tokens → text encoder → jitted sampler → VAE.

  pipe = load_pipeline("path/to/stable-diffusion-v1-5")        # a diffusers folder (model_index.json)
  out = text_to_image(pipe, ["a photo of a cat"], steps=20, guidance_scale=7.5, seed=0)
  out["images"]                                                 # (B, H, W, 3) in [-1, 1]

The denoising loop is one compiled XLA program per (batch, latent shape, sampler settings): the
UNet's variables and the text contexts are arguments of that program (``jdpm.samplers.sample`` with a
``make_noise_fn`` pytree), so new prompts, seeds and guidance scales reuse it. The scheduler folder's
betas define the VP schedule (``VPSchedule.discrete``) and its ``prediction_type`` the network's
output (noise for SD 1.x and SD 2.x-base, v for SD 2.x 768). Classifier-free guidance runs the
conditional and the negative-prompt (by default the empty prompt) contexts in one doubled batch; a
guidance window limits it to a fraction of the steps. With several devices, the batch is split over
them when it divides evenly.
"""

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jdpm import convert, parallel
from jdpm import samplers
from jdpm.diffusion import VPSchedule
from jdpm.models import clip_text

# diffusers' scheduler ``prediction_type`` → jdpm's model_type.
PREDICTION_TYPES = {"epsilon": "noise", "v_prediction": "v", "sample": "x0"}


@dataclasses.dataclass
class TextToImagePipeline:
  """A loaded text-to-image pipeline: modules, variables, tokenizer and schedule.

  A Stable Diffusion folder gives a latent pipeline (VAE, transformers' tokenizer read from
  ``tokenizer_dir``); jdpm's built-in model (`jdpm.t2i.bundle`) a pixel-space one (``vae=None``)
  with a ``word_tokenizer`` (`jdpm.t2i.tokenizer.WordTokenizer`)."""
  unet: Any
  unet_variables: Any
  vae: Any
  vae_variables: Any
  text_encoder: Any
  text_variables: Any
  tokenizer_dir: str | None
  schedule: VPSchedule
  model_type: str = "noise"
  scheduler_config: dict = dataclasses.field(default_factory=dict)
  _tokenizer: Any = None
  word_tokenizer: Any = None

  def __post_init__(self):
    # Compiled once per pipeline (per input shape); variables are arguments, not constants.
    text, vae = self.text_encoder, self.vae
    self._encode = jax.jit(lambda v, ids: text.apply(v, ids)["last_hidden_state"])
    self._decode = (lambda _, x: x) if vae is None else jax.jit(vae.decode_latents)

  @property
  def latent_shape(self):
    """(h, w, c) of the UNet's default latents."""
    return self.unet.sample_shape

  @property
  def image_size(self):
    """Default (H, W) of generated images: the UNet's sample size times the VAE's factor."""
    h, w, _ = self.latent_shape
    return h * self.downsampling_factor, w * self.downsampling_factor

  @property
  def downsampling_factor(self):
    """Image pixels per latent pixel (1 for a pixel-space pipeline)."""
    return 1 if self.vae is None else self.vae.downsampling_factor

  def tokenizer(self):
    if self._tokenizer is None:
      if self.tokenizer_dir is None:
        raise ValueError("This pipeline has no tokenizer folder: pass input_ids instead of prompts.")
      self._tokenizer = clip_text.load_tokenizer(self.tokenizer_dir)
    return self._tokenizer

  def tokenize(self, prompts):
    """Prompts → (B, 77) int32 ids with the folder's tokenizer (needs transformers).

    An empty prompt or one longer than the text encoder's context is refused (Stable Diffusion
    pipelines would silently truncate it); the unconditional context is the negative prompt's."""
    if self.word_tokenizer is not None:
      return self.word_tokenizer.encode(prompts)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    length = self.text_encoder.max_position_embeddings
    check_prompts(prompts, lambda p: len(self.tokenizer()(p)["input_ids"]), length)
    return clip_text.tokenize(self.tokenizer(), prompts, length)

  def empty_prompt_ids(self, batch=1):
    """Ids of the empty prompt, [BOS, EOS, pad, ...], from the tokenizer folder's vocabulary and
    special tokens (no BPE needed); the unconditional context of classifier-free guidance."""
    if self.word_tokenizer is not None:
      return self.word_tokenizer.empty_ids(batch)
    length = self.text_encoder.max_position_embeddings
    if self.tokenizer_dir is None:
      raise ValueError("This pipeline has no tokenizer folder: pass negative_input_ids.")
    folder = pathlib.Path(self.tokenizer_dir)
    vocab = json.loads((folder / "vocab.json").read_text())
    special = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
      if (folder / name).is_file():
        special = {**json.loads((folder / name).read_text()), **special}
    token = lambda key, default: _content(special.get(key, default))
    ids = [vocab[token("bos_token", "<|startoftext|>")], vocab[token("eos_token", "<|endoftext|>")]]
    ids += [vocab[token("pad_token", "<|endoftext|>")]] * (length - 2)
    return np.tile(np.asarray(ids, np.int32), (batch, 1))

  def encode(self, input_ids):
    """(B, L) ids → (B, L, D) context: the text encoder's last hidden state (as diffusers' SD
    pipelines; SD 2.x folders ship the 23-layer OpenCLIP tower, i.e. its penultimate layer)."""
    return self._encode(self.text_variables, jnp.asarray(input_ids, jnp.int32))

  def decode(self, latents):
    """Diffusion latents (B, h, w, c) → images (B, H, W, 3) in about [-1, 1]."""
    return self._decode(self.vae_variables, latents)


def check_prompts(prompts, count_tokens, context_length):
  """Refuses empty prompts and prompts whose tokens (with start and end tokens, as `count_tokens`
  counts them) exceed the text encoder's context of `context_length` positions."""
  for i, prompt in enumerate(prompts):
    if not prompt.strip():
      raise ValueError(f"prompt {i} is empty: give a description (the empty prompt is the "
                       f"unconditional context; set it with negative_prompt=).")
    n = count_tokens(prompt)
    if n > context_length:
      raise ValueError(f"prompt {i} has {n} tokens with its start and end tokens, more than the text "
                       f"encoder's context of {context_length}: shorten it ({prompt[:40]!r}...).")


def _content(token):
  """Tokenizer configs store special tokens as strings or as {"content": ...} dicts."""
  return token["content"] if isinstance(token, dict) else token


def load_pipeline(pipeline_dir, dtype=jnp.float32):
  """Reads a diffusers Stable Diffusion folder (model_index.json with unet, vae, text_encoder,
  tokenizer, scheduler) into a ``TextToImagePipeline``; ``dtype`` is the computation dtype."""
  parts = convert.from_diffusers(pipeline_dir, dtype=dtype)
  missing = [name for name in ("unet", "vae", "text_encoder", "scheduler") if name not in parts]
  if missing:
    raise ValueError(f"{pipeline_dir} lacks the component(s) {missing} a text-to-image pipeline needs "
                     f"(a diffusers Stable Diffusion folder has unet/, vae/, text_encoder/, tokenizer/ "
                     f"and scheduler/ with model_index.json).")
  scheduler = parts["scheduler"]
  prediction = scheduler.get("prediction_type", "epsilon")
  if prediction not in PREDICTION_TYPES:
    raise ValueError(f"Unsupported scheduler prediction_type {prediction!r}; known: "
                     f"{sorted(PREDICTION_TYPES)}.")
  (unet, unet_vars), (vae, vae_vars) = parts["unet"], parts["vae"]
  text, text_vars = parts["text_encoder"]
  schedule = VPSchedule.discrete(convert.diffusers.scheduler_betas(scheduler))
  return TextToImagePipeline(unet, unet_vars, vae, vae_vars, text, text_vars, parts.get("tokenizer"),
                             schedule, PREDICTION_TYPES[prediction], scheduler)


def _batch_sharding(batch):
  """Batch split over the largest number of local devices that divides it (None for one device)."""
  devices = jax.devices()
  n = max(d for d in range(1, len(devices) + 1) if batch % d == 0)
  if n == 1:
    return None
  mesh = jax.sharding.Mesh(np.asarray(devices[:n]), ("data",))
  return NamedSharding(mesh, P("data"))


def text_to_image(pipeline, prompts=None, *, input_ids=None, context=None, null_context=None,
                  negative_prompt="", negative_input_ids=None,
                  num_images_per_prompt=1, height=None, width=None, steps=20, guidance_scale=7.5,
                  guidance_window=None, drop_text_last=None, keep="uncond", method="unipc", order=None,
                  seed=0, latents=None, decode=True, apply_fn=None, **sampler_kwargs):
  """Generates images from prompts.

  Args:
    pipeline: a ``TextToImagePipeline`` or a pipeline folder path (loaded on each call: load once
      with ``load_pipeline`` to reuse the compiled programs).
    prompts: a string or a list of B strings (needs transformers' tokenizer), or
    input_ids: (B, L) token ids instead of prompts, or
    context: the encoded condition instead: (B, L, D) text-encoder states (e.g. edited ones), or any
      pytree with batch-leading leaves that ``apply_fn`` reads (with ``null_context`` of its structure).
    null_context: the unconditional condition of guidance instead of the negative prompt's context.
    negative_prompt / negative_input_ids: the unconditional context of classifier-free guidance
      (default: the empty prompt, as Stable Diffusion).
    num_images_per_prompt: images per prompt (the batch is B · this).
    height, width: image size (default: the pipeline's); multiples of the VAE factor × 2^(levels − 1).
    steps: sampler steps (model evaluations for the multistep methods).
    guidance_scale: classifier-free guidance scale; None or 1.0 → conditional model only (one
      batch-B call per step; 1.0 still runs the doubled batch and equals it up to rounding).
    guidance_window: (lo, hi) fractions of the evaluations that are guided (None: all).
    drop_text_last: condition-dropping acceleration: guide all but the last ``drop_text_last``
      model evaluations, which then make one network call each (None or 0: guide every one).
    keep: what those last evaluations use: "uncond" (the unconditional prediction, as the paper)
      or "cond" (the conditional one).
    method, order, **sampler_kwargs: ``jdpm.samplers.sample`` options (order None: 1 for DDIM, else 2,
      as diffusers' UniPCMultistepScheduler and DPMSolverMultistepScheduler).
    seed: initial-noise seed (the same seed gives the same images).
    latents: optional (B, h, w, c) initial noise instead of the seeded one.
    decode: decode the latents with the VAE.
    apply_fn: the network call ``apply(variables, x, t, context)`` (default ``pipeline.unet.apply``);
      wrap it to record or edit cross-attention during sampling (``jdpm.models.unet``'s
      ``capture_cross_attention`` / ``substitute``).

  Returns:
    dict: "images" (B, H, W, 3) in about [-1, 1] (when decode), "latents" (B, h, w, c), "nfe"
    (model evaluations of the sampler) and "network_calls" (batch-B UNet passes: a guided
    evaluation counts two); with ``return_trajectory=True`` also the sampler's "trajectory"
    (S + 1, B, h, w, c), "x0_pred" (NFE, B, h, w, c) and "timesteps" (S + 1,).
  """
  pipe = pipeline if isinstance(pipeline, TextToImagePipeline) else load_pipeline(pipeline)
  if sum(v is not None for v in (prompts, input_ids, context)) != 1:
    raise ValueError("Give prompts or input_ids (exactly one; or an encoded context).")
  if context is None:
    ids = pipe.tokenize(prompts) if input_ids is None else np.asarray(input_ids, np.int32)
    ids = np.repeat(ids, num_images_per_prompt, axis=0)
    context = pipe.encode(ids)
  else:
    context = jax.tree.map(lambda c: jnp.repeat(jnp.asarray(c), num_images_per_prompt, axis=0), context)
  batch = jax.tree.leaves(context)[0].shape[0]
  null = null_context
  if guidance_scale is not None and null is None:
    if negative_input_ids is None:
      negative_input_ids = (pipe.empty_prompt_ids() if negative_prompt == ""
                            else pipe.tokenize([negative_prompt]))
    negative = np.asarray(negative_input_ids, np.int32)
    if negative.shape[0] not in (1, batch):
      negative = np.repeat(negative, num_images_per_prompt, axis=0)
    null = pipe.encode(negative)
    null = null[0] if null.shape[0] == 1 else null  # (L, D) broadcasts over the batch
  factor = pipe.downsampling_factor
  h, w, c = pipe.latent_shape
  if height is not None or width is not None:
    height, width = height or h * factor, width or w * factor
    if height % factor or width % factor:
      raise ValueError(f"height and width must be multiples of {factor}; got {height}x{width}.")
    h, w = height // factor, width // factor
  if latents is None:
    latents = jax.random.normal(jax.random.key(seed), (batch, h, w, c), jnp.float32)
  sharding = _batch_sharding(batch)
  unet_variables = pipe.unet_variables
  if sharding is not None:
    latents, context = jax.device_put((latents, context), sharding)
    # Weights restored from a checkpoint live on one device: replicate them onto the batch's devices.
    unet_variables, null = parallel.on_mesh((unet_variables, null), sharding.mesh)
  plan_kwargs = {k: v for k, v in sampler_kwargs.items() if k not in ("rng", "return_trajectory")}
  order = order or (1 if method == "ddim" else 2)
  nfe = int(samplers.make_plan(pipe.schedule, method=method, steps=steps, order=order, **plan_kwargs).nfe)
  noise_fn = make_text_noise_fn(apply_fn or pipe.unet.apply, unet_variables, pipe.schedule, context,
                                null, nfe, model_type=pipe.model_type, guidance_scale=guidance_scale,
                                guidance_window=guidance_window, drop_text_last=drop_text_last, keep=keep)
  x0 = samplers.sample(noise_fn, pipe.schedule, latents, method=method, steps=steps, order=order,
                       **sampler_kwargs)
  extra = {}
  if sampler_kwargs.get("return_trajectory"):
    x0, info = x0
    extra = {"trajectory": info["trajectory"], "x0_pred": info["x0_pred"], "timesteps": info["timesteps"]}
  out = {**extra, "latents": x0, "nfe": nfe, "network_calls": network_calls(nfe, guidance_scale, guidance_window,
                                                                   drop_text_last)}
  if decode:
    out["images"] = pipe.decode(x0)
  return out


def make_text_noise_fn(apply_fn, variables, schedule, context, null, nfe, *, model_type="noise",
                       guidance_scale=None, guidance_window=None, drop_text_last=None, keep="uncond"):
  """The samplers' noise function for a text-conditional denoiser, with classifier-free guidance
  (scale None: conditional only), an optional guidance window and the condition-dropping
  acceleration (guidance for the first nfe - drop_text_last evaluations, then `keep` only)."""
  guidance = None
  if drop_text_last:
    if guidance_scale is None:
      raise ValueError("drop_text_last needs classifier-free guidance (a guidance_scale).")
    guidance = samplers.drop_condition_guidance(guidance_scale, null, nfe=nfe, drop_last=int(drop_text_last),
                                                keep=keep, window=guidance_window, total_n=schedule.total_n)
    guidance_scale = None
  return samplers.make_noise_fn(apply_fn, variables, schedule, y=context, model_type=model_type,
                                guidance_scale=guidance_scale, null=null, guidance_window=guidance_window
                                if guidance is None else None, guidance=guidance)


def network_calls(nfe, guidance_scale, guidance_window=None, drop_text_last=None):
  """Batch-B network passes of a run (None when a guidance window makes it depend on the grid)."""
  if guidance_scale is None:
    return nfe
  if guidance_window is not None:
    return None
  return samplers.guided_nfe(nfe, int(drop_text_last or 0))


__all__ = ["PREDICTION_TYPES", "TextToImagePipeline", "check_prompts", "load_pipeline", "make_text_noise_fn",
           "network_calls", "text_to_image"]
