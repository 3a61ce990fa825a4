"""DP-IR: a frozen restorer phi_IR, a frozen denoiser phi_D and a trained fusion phi_F in one reverse process.

Images outside are (B, H, W, 3) in [0, 1]; the diffusion runs in [-1, 1]. At step n with
alpha_bar_n, the VP state x_n is rescaled to the variance-exploding form the denoiser expects,
x~ = x_n / sqrt(ab_n) with noise level sigma~ = sqrt((1 - ab_n) / ab_n), and

  x0_hat = phi_F(x0_IR, phi_D(x~, sigma~), n),   x0_IR = phi_IR(y) (computed once).

`DPIR` bundles the three Flax modules and the schedule; its parameters are one dict
``{"denoiser": ..., "restorer": ..., "fusion": ...}`` (the layout the training code freezes by name).
The restorer may be any callable ``y -> x0_IR`` instead (`restorer_fn`), e.g. a classical baseline.
"""

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdpm.restoration import sampler


def to_model(x):
  """[0, 1] -> [-1, 1]."""
  return 2.0 * x - 1.0


def to_image(x):
  """[-1, 1] -> [0, 1]."""
  return 0.5 * (x + 1.0)


def ve_form(x_n, abar_n):
  """(x~, sigma~): the VP state at alpha_bar abar_n rescaled to x0 + sigma~ eps."""
  return x_n / jnp.sqrt(abar_n), jnp.sqrt((1.0 - abar_n) / abar_n)


def lipschitz(operator, shape, iterations=20, seed=0):
  """The largest eigenvalue of A^T A for a linear `operator` on arrays of `shape` (power iteration)."""
  x = jax.random.normal(jax.random.PRNGKey(seed), shape)
  _, vjp = jax.vjp(operator, x)
  value = jnp.float32(1.0)
  for _ in range(iterations):
    y = vjp(operator(x))[0]
    value = jnp.sqrt(jnp.sum(y * y) / jnp.sum(x * x))
    x = y / jnp.linalg.norm(y)
  return value


@dataclasses.dataclass(frozen=True)
class DPIR:
  """The three modules and the diffusion schedule of DP-IR.

  Attributes:
    denoiser: phi_D, called as ``denoiser.apply({"params": p}, x~, sigma~)``.
    restorer: phi_IR, called as ``restorer.apply({"params": p}, y)`` with y and its output in [0, 1].
    fusion: phi_F, called as ``fusion.apply({"params": p}, x0_IR, x0_D, n)`` in [-1, 1].
    alphas_cumprod: (N,) alpha_bar_n of the process (float64).
  """
  denoiser: nn.Module
  restorer: nn.Module
  fusion: nn.Module
  alphas_cumprod: np.ndarray

  @property
  def num_timesteps(self):
    return int(self.alphas_cumprod.shape[0])

  def denoise(self, params, x_n, n):
    """phi_D's E[x0 | x_n] at step n (a scalar or (B,) int), [-1, 1]."""
    abar = jnp.asarray(self.alphas_cumprod, jnp.float32)[n]
    abar = jnp.broadcast_to(abar, x_n.shape[:1])
    x_ve, sigma = ve_form(x_n, abar[:, None, None, None])
    return self.denoiser.apply({"params": params["denoiser"]}, x_ve, sigma[:, 0, 0, 0])

  def fuse(self, params, x0_ir, x0_d, n):
    t = jnp.broadcast_to(jnp.asarray(n, jnp.float32), x0_ir.shape[:1])
    return self.fusion.apply({"params": params["fusion"]}, x0_ir, x0_d, t)

  def restore_ir(self, params, y):
    """phi_IR(y) in [0, 1]."""
    return self.restorer.apply({"params": params["restorer"]}, y)

  def restore(self, params, y, rng, *, steps=None, tau=None, eta=1.0, restorer_fn: Callable | None = None,
              x0_ir=None, scan=True):
    """DP-IR: (x0 in [0, 1], nfe). `tau` None runs the full chain; `steps` K uses K strided steps.

    restorer_fn: a callable y -> x0_IR in [0, 1] replacing the trained phi_IR (e.g. a classical
    baseline); x0_ir: the restorer's output, when already computed. scan=False runs the steps in
    Python with the network step jit-compiled once (one compilation serves every ladder length).
    """
    if x0_ir is None:
      x0_ir = restorer_fn(y) if restorer_fn is not None else self.restore_ir(params, y)
    x0_ir = to_model(x0_ir)
    estimate = self.x0_hat if scan else self._x0_hat_jit

    def x0_fn(x_n, n):
      return estimate(params, x0_ir, x_n, n)

    rng_start, rng = jax.random.split(rng)
    x_T = jax.random.normal(rng_start, x0_ir.shape)
    x0, nfe = sampler.sample(x0_fn, self.alphas_cumprod, x_T, rng, steps=steps, tau=tau, x0_jump=x0_ir, eta=eta,
                             scan=scan)
    return to_image(x0), nfe

  def x0_hat(self, params, x0_ir, x_n, n):
    """E[x0 | y, x_n] = phi_F(x0_IR, phi_D(x~_n, sigma~_n), n), all in [-1, 1]."""
    return self.fuse(params, x0_ir, self.denoise(params, x_n, n), n)

  @functools.cached_property
  def _x0_hat_jit(self):
    return jax.jit(self.x0_hat)

  def restore_denoiser_only(self, params, y, operator, rng, shape, *, steps=None, eta=1.0, dc_steps=5, scan=True):
    """The baseline without a restorer: phi_D's estimate made consistent with y at every step.

    x0_hat = phi_D(x~, sigma~), then `dc_steps` gradient steps on ||A x0_hat - y||^2 / 2 (in [0, 1]
    units, step 1 / ||A^T A||), as plug-and-play diffusion restorers (DiffPIR, DPS-like) do. The
    reverse process starts from pure noise at the top of the ladder.

    Args:
      operator: the noise-free degradation x -> A x (``task.operator(params)``).
      shape: (B, H, W, 3) of the restored images.
    Returns:
      (x0 in [0, 1], nfe).
    """
    step = 1.0 / lipschitz(operator, shape)

    def x0_fn(x_n, n):
      z = to_image(self.denoise(params, x_n, n))
      for _ in range(dc_steps):
        residual, vjp = jax.vjp(operator, z)
        z = z - step * vjp(residual - y)[0]
      return to_model(z)

    rng_start, rng = jax.random.split(rng)
    x_T = jax.random.normal(rng_start, shape)
    x0, nfe = sampler.sample(x0_fn if scan else jax.jit(x0_fn), self.alphas_cumprod, x_T, rng, steps=steps,
                             eta=eta, scan=scan)
    return to_image(x0), nfe


MODULES = ("denoiser", "restorer", "fusion")


def init_params(model: DPIR, rng, example_y, image_shape, modules=MODULES) -> dict[str, Any]:
  """Fresh parameters of `modules` for an example observation batch and images of (B, H, W, 3)."""
  def init(rng, example_y):
    keys = dict(zip(MODULES, jax.random.split(rng, 3)))
    x = jnp.zeros(image_shape, jnp.float32)
    t = jnp.zeros(image_shape[:1], jnp.float32)
    calls = {"denoiser": lambda k: model.denoiser.init(k, x, jnp.ones(image_shape[:1])),
             "restorer": lambda k: model.restorer.init(k, example_y),
             "fusion": lambda k: model.fusion.init(k, x, x, t)}
    return {name: calls[name](keys[name])["params"] for name in modules}
  # One compiled program: initialising op by op costs a compilation per operation.
  return jax.jit(init)(rng, jnp.asarray(example_y))


def count_params(tree):
  """The number of scalars in a parameter tree."""
  return int(sum(np.prod(a.shape) for a in jax.tree.leaves(tree)))
