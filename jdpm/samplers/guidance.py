"""From a denoiser apply(variables, x, t_input, cond) to the samplers' noise_fn(x, t).

`make_noise_fn` handles what sits between a trained network and an ODE solver:
  * model outputs: noise ("noise"), data ("x0") or velocity ("v") prediction, converted to noise;
  * learned-sigma models (2C output channels): only the first C channels (the mean) are kept;
  * discrete-time models: the continuous t in (0, 1] becomes t_input = (t - 1/N) * 1000 (as DPM-Solver's
    model_wrapper does), i.e. 0..999 for N = 1000;
  * classifier-free guidance (`Guidance`), in one batched call on [x, x] with conditions [cond, null].

The condition is any pytree (class labels, a text context and its mask, a degraded image, a dict of them)
with an explicit null condition of the same structure (see `jdpm.diffusion.conditioning`). `Guidance` is the
one guidance combiner of jdpm: the ODE samplers use it through `NoiseFn`, DDPM sampling calls it directly
(`jdpm.generate`). It offers
  * a constant scale or MDTv2's power-cosine schedule on the network's time input;
  * guidance of the first `channels` output channels only (the official DiT / MDT / EDT sampling scripts
    guide 3 of the 4 latent channels; the rest are the conditional output);
  * a guidance window: guidance only for the fraction window = (lo, hi) of the model evaluations
    (e.g. (0, 0.4) = the first 40%); outside it a single batch-B call with the conditional (or null)
    condition, chosen at run time by `lax.cond`, so that those steps cost one forward pass;
  * condition-dropping acceleration (Yi et al. 2024, "Towards Understanding the Working Mechanism of
    Text-to-Image Diffusion Model"): guidance for the first k model evaluations only, then the unconditional
    prediction alone (the paper) or the conditional one alone; k is a run-time value (`until`, a leaf), so
    every k shares one compiled sampling program. `drop_condition_guidance` builds it and `guided_nfe`
    counts its network calls.

The results are pytrees (parameters, conditions and scales are leaves), so `sample` passes them to its
compiled loop as arguments instead of baking them into the program.
"""

import dataclasses
import typing

import jax
import jax.numpy as jnp
import numpy as np

from jdpm.diffusion import conditioning
from jdpm.diffusion.guidance import combine, power_cosine_guidance_scale

MODEL_TYPES = ("noise", "x0", "v")
OUTSIDE_WINDOW = ("cond", "uncond")


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


def _static(default=None):
  return dataclasses.field(metadata=dict(static=True), default=default)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Guidance:
  """Classifier-free guidance: ``out = u + s·(c − u)`` from one call on [x, x] with [cond, null].

  Build it with `make_guidance`. Calling it as ``guidance(fn, x, t, cond, t_model=..., progress=...)``
  runs ``fn(x, t, cond) -> (B, ..., C)`` (any network output: noise, or noise + variance channels) and
  returns the guided output.

  Attributes:
    scale: () the guidance scale s (with a power-cosine schedule: the scale at t_model = 0).
    null: the null condition, a pytree with the condition's structure (leaves broadcastable to its leaves).
    channels: guide only the first k output channels (None: all).
    window: (lo, hi) fractions of the model evaluations that are guided (None: all).
    outside: "cond" or "uncond": the single prediction used outside the window.
    scale_pow: MDTv2's power-cosine schedule with this power (None: constant scale).
    total_n: steps of the discrete process that t_model counts (the schedule's time unit).
    until: () fraction of the model evaluations, from the first, that are guided (a run-time value; None:
      no such limit); the later ones make the single `outside` call. With a window, both must hold.
  """
  scale: typing.Any
  null: typing.Any
  until: typing.Any = None
  channels: typing.Optional[int] = _static()
  window: typing.Optional[tuple] = _static()
  outside: str = _static("cond")
  scale_pow: typing.Optional[float] = _static()
  total_n: int = _static(1000)

  @property
  def uses_progress(self):
    return self.window is not None or self.until is not None

  def scale_at(self, t_model, dtype, ndim):
    """The scale for network time inputs t_model (B,), shaped to broadcast over (B, ...) of ndim dims."""
    if self.scale_pow is None:
      return jnp.asarray(self.scale, dtype)
    # MDTv2's power-cosine schedule: the scale grows from 1 (pure noise) to the scale at t = 0, evaluated
    # on the network's time input, as the official forward_with_cfg does.
    per_sample = power_cosine_guidance_scale(self.scale, t_model, self.total_n, self.scale_pow)
    return per_sample.astype(dtype).reshape((-1,) + (1,) * (ndim - 1))

  def guided(self, fn, x, t, cond, t_model):
    """The guided output: one call of `fn` on the doubled batch."""
    out = fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), conditioning.with_null(cond, self.null))
    c, u = jnp.split(out, 2)
    return combine(c, u, self.scale_at(t_model, c.dtype, c.ndim), self.channels)

  def single(self, fn, x, t, cond):
    """The unguided output outside the window: conditional or null condition, batch B."""
    if self.outside == "uncond":
      cond = conditioning.null_like(cond, self.null)
    return fn(x, t, cond)

  def __call__(self, fn, x, t, cond, *, t_model, progress=None):
    if not self.uses_progress or progress is None:
      return self.guided(fn, x, t, cond, t_model)
    inside = jnp.asarray(True)
    if self.window is not None:
      lo, hi = self.window
      inside = (progress >= lo) & (progress < hi)
    if self.until is not None:
      inside = inside & (progress < self.until)
    return jax.lax.cond(inside, lambda x, t: self.guided(fn, x, t, cond, t_model),
                        lambda x, t: self.single(fn, x, t, cond), x, t)


def make_guidance(scale, null, *, channels=None, window=None, outside="cond", scale_pow=None, total_n=1000,
                  until=None):
  """Validates the guidance settings and returns a `Guidance` (see its attributes)."""
  if null is None:
    raise ValueError("classifier-free guidance needs the null condition (null=..., or null_label= the "
                     "label of the unconditional class).")
  if outside not in OUTSIDE_WINDOW:
    raise ValueError(f"outside_window must be 'cond' or 'uncond'; got {outside!r}.")
  if window is not None:
    lo, hi = (float(v) for v in window)
    if not 0.0 <= lo <= hi <= 1.0:
      raise ValueError(f"guidance_window must be (lo, hi) with 0 <= lo <= hi <= 1; got {window}.")
    window = (lo, hi)
  if channels is not None and channels < 1:
    raise ValueError(f"guided_channels must be >= 1 or None; got {channels}.")
  return Guidance(scale=jnp.asarray(scale), null=null, channels=channels, window=window, outside=outside,
                  scale_pow=None if scale_pow is None else float(scale_pow), total_n=int(total_n),
                  until=None if until is None else jnp.asarray(until, jnp.float32))


def _check_drop(nfe, drop_last):
  for name, v in (("nfe", nfe), ("drop_last", drop_last)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
      raise ValueError(f"{name} must be an integer >= 0; got {v!r}.")
  if drop_last > nfe:
    raise ValueError(f"drop_last={drop_last} exceeds the {nfe} model evaluations of the sampler.")


def guided_until(nfe, drop_last):
  """The `until` fraction that guides the first nfe - drop_last of nfe model evaluations.

  The samplers pass progress = j / nfe for evaluation j; the cut lies half an evaluation before the first
  unguided one, so float32 rounding of j / nfe cannot move it.
  """
  _check_drop(nfe, drop_last)
  return (nfe - drop_last - 0.5) / nfe


def drop_condition_guidance(scale, null, *, nfe, drop_last, keep="uncond", **kwargs):
  """Classifier-free guidance for the first nfe - drop_last model evaluations, then one network call per
  evaluation: the unconditional prediction (keep="uncond", the paper's acceleration) or the conditional one
  (keep="cond"). nfe is the sampler's number of model evaluations (`make_plan(...).nfe`); other keyword
  arguments go to `make_guidance`. Changing drop_last reuses the compiled sampling program."""
  return make_guidance(scale, null, outside=keep, until=guided_until(nfe, drop_last), **kwargs)


def guided_nfe(nfe, drop_last=0):
  """Network calls (in units of one batch-B forward pass) of a guided run with `nfe` model evaluations whose
  last `drop_last` are unguided: 2 (nfe - drop_last) + drop_last, e.g. 50 steps, drop_last 25 → 75."""
  _check_drop(nfe, drop_last)
  return 2 * (nfe - drop_last) + drop_last


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NoiseFn:
  """noise_fn(x, t, progress=None) -> eps for the samplers; build it with `make_noise_fn`."""
  variables: typing.Any
  y: typing.Any
  sched: typing.Any
  guidance: typing.Optional[Guidance]
  apply_fn: _StaticCallable = _static()
  model_type: str = _static("noise")
  discrete_time: bool = _static(True)
  learned_sigma: bool = _static(False)

  @property
  def uses_progress(self):
    """`sample` passes progress= (evaluations done / NFE) when a guidance window is set."""
    return self.guidance is not None and self.guidance.uses_progress

  def model_time(self, t):
    """The time input of the network for continuous times t."""
    if self.discrete_time:
      return (t - 1.0 / self.sched.total_n) * 1000.0
    return t

  def _eps(self, x, t, cond):
    """One network call on (x, t, cond), as noise prediction with the variance channels dropped."""
    out = self.apply_fn(self.variables, x, self.model_time(t), cond)
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

  def __call__(self, x, t, progress=None):
    if self.guidance is None:
      return self._eps(x, t, self.y)
    return self.guidance(self._eps, x, t, self.y, t_model=self.model_time(t), progress=progress)


def make_noise_fn(apply_fn, variables, sched, *, y=None, model_type="noise", learned_sigma=False,
                  discrete_time=None, guidance_scale=None, null=None, null_label=None, guided_channels=None,
                  guidance_window=None, outside_window="cond", scale_pow=None, guidance=None):
  """Wraps a denoiser into the noise_fn(x, t) of `jdpm.samplers.sample`.

  Args:
    apply_fn: apply(variables, x, t_input, cond) -> (B, ..., C) or (B, ..., 2C) with learned_sigma (channels
      last), e.g. a Flax `model.apply`.
    variables: the network's variables (a pytree; passed through compiled samplers as an argument).
    sched: the `VPSchedule` the samplers use (for t_input and for x0 / v conversion).
    y: the condition: (B,) labels or any pytree the network takes (a dict with a text context (B, L, D) and
      its mask, a degraded image, ...); None for unconditional networks.
    model_type: what the network predicts: "noise", "x0" or "v".
    learned_sigma: keep only the first C of 2C output channels (C = x.shape[-1]).
    discrete_time: feed t_input = (t - 1/N) * 1000 (default: True for discrete schedules).
    guidance_scale: classifier-free guidance scale s (None: no guidance, one conditional call).
    null: the null condition (structure of y, leaves broadcastable to y's); needed with guidance_scale.
    null_label: for class labels, the label of the unconditional class (e.g. num_classes): null=null_label.
    guided_channels: guide only the first k channels (None: all).
    guidance_window: (lo, hi) fractions of the model evaluations that are guided (None: all).
    outside_window: "cond" or "uncond": the single prediction used outside the window.
    scale_pow: use MDTv2's power-cosine guidance schedule with this power (the scale rises from 1 at
      t_input = N to guidance_scale at 0; see `jdpm.diffusion.power_cosine_guidance_scale`); None: constant.
    guidance: a ready `Guidance` (from `make_guidance`) instead of the guidance arguments above.
  Returns:
    a `NoiseFn`.
  """
  if model_type not in MODEL_TYPES:
    raise ValueError(f"Unknown model_type {model_type!r}; choose one of {MODEL_TYPES}.")
  if null is not None and null_label is not None:
    raise ValueError("give the null condition once: null= (any condition) or null_label= (class labels).")
  null = null_label if null is None else null
  if (guidance_scale is not None or guidance is not None) and y is None:
    raise ValueError("classifier-free guidance needs the condition y.")
  if guidance_window is not None and guidance_scale is None:
    raise ValueError("guidance_window needs guidance_scale.")
  if discrete_time is None:
    discrete_time = sched.kind == "discrete"
  if guidance is not None:
    if guidance_scale is not None:
      raise ValueError("give either guidance= or guidance_scale= (and its settings), not both.")
  elif guidance_scale is not None:
    guidance = make_guidance(guidance_scale, null, channels=guided_channels, window=guidance_window,
                             outside=outside_window, scale_pow=scale_pow, total_n=sched.total_n)
  elif outside_window not in OUTSIDE_WINDOW:
    raise ValueError(f"outside_window must be 'cond' or 'uncond'; got {outside_window!r}.")
  return NoiseFn(variables=variables, y=y, sched=sched, guidance=guidance, apply_fn=_StaticCallable(apply_fn),
                 model_type=model_type, discrete_time=bool(discrete_time), learned_sigma=bool(learned_sigma))
