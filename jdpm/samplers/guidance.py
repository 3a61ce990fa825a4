"""From a denoiser apply(variables, x, t_input, y) to the samplers' noise_fn(x, t).

`make_noise_fn` handles what sits between a trained network and an ODE solver:
  * model outputs: noise ("noise"), data ("x0") or velocity ("v") prediction, converted to noise;
  * learned-sigma models (2C output channels): only the first C channels (the mean) are kept;
  * discrete-time models: the continuous t in (0, 1] becomes t_input = (t - 1/N) * 1000 (as DPM-Solver's
    model_wrapper does), i.e. 0..999 for N = 1000;
  * classifier-free guidance in one batched call on [x, x] with labels [y, null]:
    eps = eps_u + s (eps_c - eps_u), optionally on the first `guided_channels` channels only (the official
    DiT / MDT / EDT sampling scripts guide 3 of the 4 latent channels; the rest are the conditional output);
  * a guidance window: guidance only for the fraction window = (lo, hi) of the model evaluations
    (e.g. (0, 0.4) = the first 40%); outside it a single batch-B call with the conditional (or
    unconditional) label, chosen at run time by `lax.cond`, so that those steps cost one forward pass.

The result is a pytree (parameters and labels are leaves), so `sample` passes it to its compiled loop as
an argument instead of baking the parameters into the program.
"""

import dataclasses
import typing

import jax
import jax.numpy as jnp

from jdpm.diffusion.guidance import power_cosine_guidance_scale

MODEL_TYPES = ("noise", "x0", "v")


class _StaticCallable:
  """A callable compared by identity (bound methods: by instance and function), for pytree metadata."""

  def __init__(self, fn):
    self.fn = fn

  def _key(self):
    fn = self.fn
    if hasattr(fn, "__self__") and hasattr(fn, "__func__"):
      return (id(fn.__self__), fn.__func__)
    return (id(fn),)

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **kwargs)

  def __hash__(self):
    return hash(self._key())

  def __eq__(self, other):
    return isinstance(other, _StaticCallable) and self._key() == other._key()


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NoiseFn:
  """noise_fn(x, t, progress=None) -> eps for the samplers; build it with `make_noise_fn`."""
  variables: typing.Any
  y: typing.Any
  sched: typing.Any
  guidance_scale: typing.Any
  apply_fn: _StaticCallable = dataclasses.field(metadata=dict(static=True))
  model_type: str = dataclasses.field(metadata=dict(static=True), default="noise")
  discrete_time: bool = dataclasses.field(metadata=dict(static=True), default=True)
  learned_sigma: bool = dataclasses.field(metadata=dict(static=True), default=False)
  null_label: typing.Optional[int] = dataclasses.field(metadata=dict(static=True), default=None)
  guided_channels: typing.Optional[int] = dataclasses.field(metadata=dict(static=True), default=None)
  guidance_window: typing.Optional[tuple] = dataclasses.field(metadata=dict(static=True), default=None)
  outside_window: str = dataclasses.field(metadata=dict(static=True), default="cond")
  scale_pow: typing.Optional[float] = dataclasses.field(metadata=dict(static=True), default=None)

  @property
  def uses_progress(self):
    """`sample` passes progress= (evaluations done / NFE) when a guidance window is set."""
    return self.guidance_window is not None

  def model_time(self, t):
    """The time input of the network for continuous times t."""
    if self.discrete_time:
      return (t - 1.0 / self.sched.total_n) * 1000.0
    return t

  def _eps(self, x, t, y):
    """One network call on (x, t, y), as noise prediction with the variance channels dropped."""
    out = self.apply_fn(self.variables, x, self.model_time(t), y)
    if self.learned_sigma:
      out = out[..., :x.shape[-1]]
    if self.model_type == "noise":
      return out
    shape = (-1,) + (1,) * (x.ndim - 1)
    alpha = self.sched.alpha(t).reshape(shape).astype(out.dtype)
    sigma = self.sched.sigma(t).reshape(shape).astype(out.dtype)
    if self.model_type == "x0":
      return (x - alpha * out) / sigma
    return alpha * out + sigma * x

  def _guided(self, x, t):
    y_null = jnp.full_like(self.y, self.null_label)
    eps = self._eps(jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([self.y, y_null]))
    cond, uncond = jnp.split(eps, 2)
    scale = jnp.asarray(self.guidance_scale, cond.dtype)
    if self.scale_pow is not None:
      # MDTv2's power-cosine schedule: the scale grows from 1 (pure noise) to guidance_scale (t = 0),
      # evaluated on the network's time input, as the official forward_with_cfg does.
      per_sample = power_cosine_guidance_scale(self.guidance_scale, self.model_time(t), self.sched.total_n,
                                               self.scale_pow)
      scale = per_sample.astype(cond.dtype).reshape((-1,) + (1,) * (cond.ndim - 1))
    k = cond.shape[-1] if self.guided_channels is None else self.guided_channels
    guided = uncond[..., :k] + scale * (cond[..., :k] - uncond[..., :k])
    return jnp.concatenate([guided, cond[..., k:]], axis=-1)

  def _single(self, x, t):
    if self.guidance_scale is None or self.outside_window == "cond":
      return self._eps(x, t, self.y)
    return self._eps(x, t, jnp.full_like(self.y, self.null_label))

  def __call__(self, x, t, progress=None):
    if self.guidance_scale is None:
      return self._single(x, t)
    if self.guidance_window is None or progress is None:
      return self._guided(x, t)
    lo, hi = self.guidance_window
    inside = (progress >= lo) & (progress < hi)
    return jax.lax.cond(inside, self._guided, self._single, x, t)


def make_noise_fn(apply_fn, variables, sched, *, y=None, model_type="noise", learned_sigma=False,
                  discrete_time=None, guidance_scale=None, null_label=None, guided_channels=None,
                  guidance_window=None, outside_window="cond", scale_pow=None):
  """Wraps a denoiser into the noise_fn(x, t) of `jdpm.samplers.sample`.

  Args:
    apply_fn: apply(variables, x, t_input, y) -> (B, ..., C) or (B, ..., 2C) with learned_sigma (channels
      last), e.g. a Flax `model.apply`.
    variables: the network's variables (a pytree; passed through compiled samplers as an argument).
    sched: the `VPSchedule` the samplers use (for t_input and for x0 / v conversion).
    y: (B,) labels (or any conditioning pytree the network takes; None for unconditional networks).
    model_type: what the network predicts: "noise", "x0" or "v".
    learned_sigma: keep only the first C of 2C output channels (C = x.shape[-1]).
    discrete_time: feed t_input = (t - 1/N) * 1000 (default: True for discrete schedules).
    guidance_scale: classifier-free guidance scale s (None: no guidance, one conditional call).
    null_label: the label of the unconditional class (e.g. num_classes); needed with guidance_scale.
    guided_channels: guide only the first k channels (None: all).
    guidance_window: (lo, hi) fractions of the model evaluations that are guided (None: all).
    outside_window: "cond" or "uncond": the single prediction used outside the window.
    scale_pow: use MDTv2's power-cosine guidance schedule with this power (the scale rises from 1 at
      t_input = N to guidance_scale at 0; see `jdpm.diffusion.power_cosine_guidance_scale`); None: constant.
  Returns:
    a `NoiseFn`.
  """
  if model_type not in MODEL_TYPES:
    raise ValueError(f"Unknown model_type {model_type!r}; choose one of {MODEL_TYPES}.")
  if guidance_scale is not None and null_label is None:
    raise ValueError("classifier-free guidance needs null_label, the label of the unconditional class.")
  if guidance_scale is not None and y is None:
    raise ValueError("classifier-free guidance needs the conditional labels y.")
  if outside_window not in ("cond", "uncond"):
    raise ValueError(f"outside_window must be 'cond' or 'uncond'; got {outside_window!r}.")
  if guidance_window is not None:
    if guidance_scale is None:
      raise ValueError("guidance_window needs guidance_scale.")
    lo, hi = (float(v) for v in guidance_window)
    if not 0.0 <= lo <= hi <= 1.0:
      raise ValueError(f"guidance_window must be (lo, hi) with 0 <= lo <= hi <= 1; got {guidance_window}.")
    guidance_window = (lo, hi)
  if guided_channels is not None and guided_channels < 1:
    raise ValueError(f"guided_channels must be >= 1 or None; got {guided_channels}.")
  if discrete_time is None:
    discrete_time = sched.kind == "discrete"
  return NoiseFn(variables=variables, y=y, sched=sched,
                 guidance_scale=None if guidance_scale is None else jnp.asarray(guidance_scale),
                 apply_fn=_StaticCallable(apply_fn), model_type=model_type, discrete_time=bool(discrete_time),
                 learned_sigma=bool(learned_sigma), null_label=None if null_label is None else int(null_label),
                 guided_channels=guided_channels, guidance_window=guidance_window, outside_window=outside_window,
                 scale_pow=None if scale_pow is None else float(scale_pow))
