"""Condition-dropping acceleration (guidance for the first evaluations, then one network call each):
exact network-call counts inside the one compiled sampling loop, agreement with a two-phase DDIM run
and with the plain guided / unguided samplers, no retrace per cut, and the sweep of the analysis command on
the tiny random folder of tests/data/diffusers_tiny (tools/make_diffusers_reference.py); the call count
through the pixel-space pipeline is in tests/test_analysis_attention.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdpm import pipelines, samplers
from jdpm.diffusion import VPSchedule
from jdpm.samplers import engine

B = 2
SCHED = VPSchedule.linear(beta_0=0.1, beta_1=20.0)
NULL = jnp.zeros((3,))


def toy_apply(calls):
  """A condition-dependent 'denoiser' that records the batch size of every call."""

  def apply(variables, x, t, cond):
    jax.debug.callback(lambda n: calls.append(int(n)), x.shape[0])
    shift = jnp.tanh(cond @ variables["w"])[:, None, None, :]
    return variables["a"] * x + 0.3 * shift * (1.0 + t[:, None, None, None] / 1000.0)

  return apply


VARIABLES = {"a": jnp.float32(0.4), "w": jnp.ones((3, 2), jnp.float32)}
COND = jnp.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]], jnp.float32)
X_T = jax.random.normal(jax.random.key(0), (B, 4, 4, 2), jnp.float32)


def run(calls, method, steps, *, drop_last=None, keep="uncond", scale=4.0, apply=None, **kw):
  apply = apply or toy_apply(calls)
  if drop_last is None:
    guidance = None if scale is None else samplers.make_guidance(scale, NULL)
  else:
    guidance = samplers.drop_condition_guidance(scale, NULL, nfe=steps, drop_last=drop_last, keep=keep)
  fn = samplers.make_noise_fn(apply, VARIABLES, SCHED, y=COND, guidance=guidance, discrete_time=False)
  out = samplers.sample(fn, SCHED, X_T, method=method, steps=steps, **kw)
  return np.asarray(jax.block_until_ready(out))


def test_guided_nfe_formula():
  assert samplers.guided_nfe(50, 25) == 75 and samplers.guided_nfe(50) == 100
  assert samplers.guided_nfe(50, 50) == 50
  with pytest.raises(ValueError, match="exceeds"):
    samplers.guided_nfe(10, 11)
  with pytest.raises(ValueError, match="drop_last"):
    samplers.guided_until(10, -1)


@pytest.mark.parametrize("method", ["ddim", "dpm_solver++", "unipc"])
def test_network_calls_are_exact(method):
  calls = []
  run(calls, method, 50, drop_last=25)
  # 25 doubled-batch calls, then 25 single ones: 75 batch-B passes instead of 100.
  assert calls == [2 * B] * 25 + [B] * 25
  assert sum(calls) // B == samplers.guided_nfe(50, 25) == 75


def test_cut_is_a_runtime_value_one_program():
  calls = []
  apply = toy_apply(calls)
  run(calls, "unipc", 8, drop_last=0, apply=apply)
  before = engine.run_jit._cache_size()
  for a in (1, 3, 8):
    calls.clear()
    run(calls, "unipc", 8, drop_last=a, apply=apply)
    assert calls == [2 * B] * (8 - a) + [B] * a
  assert engine.run_jit._cache_size() == before


@pytest.mark.parametrize("method", ["dpm_solver++"])
def test_extremes_equal_plain_guided_and_unguided(method):
  calls = []
  np.testing.assert_allclose(run(calls, method, 6, drop_last=0), run(calls, method, 6), atol=1e-6)
  cond_only = run(calls, method, 6, scale=None)
  np.testing.assert_allclose(run(calls, method, 6, drop_last=6, keep="cond"), cond_only, atol=1e-6)
  # scale 0 of u + s (c - u) is the unconditional prediction alone.
  uncond_only = run(calls, method, 6, scale=0.0)
  np.testing.assert_allclose(run(calls, method, 6, drop_last=6, keep="uncond"), uncond_only, atol=1e-6)
  assert np.abs(uncond_only - cond_only).max() > 1e-2


def test_ddim_equals_two_phase_run():
  """DDIM is one-step: guided steps to t_k, then unconditional steps from t_k, on the same grid."""
  calls = []
  steps, a, t_end = 10, 4, 1e-3
  accelerated = run(calls, "ddim", steps, drop_last=a, t_start=1.0, t_end=t_end)
  t_k = 1.0 + (t_end - 1.0) * (steps - a) / steps
  guided = samplers.make_noise_fn(toy_apply(calls), VARIABLES, SCHED, y=COND, discrete_time=False,
                                  guidance_scale=4.0, null=NULL)
  uncond = samplers.make_noise_fn(toy_apply(calls), VARIABLES, SCHED, y=COND, discrete_time=False,
                                  guidance_scale=0.0, null=NULL)
  mid = samplers.sample(guided, SCHED, X_T, method="ddim", steps=steps - a, t_start=1.0, t_end=t_k)
  two_phase = samplers.sample(uncond, SCHED, mid, method="ddim", steps=a, t_start=t_k, t_end=t_end)
  np.testing.assert_allclose(accelerated, np.asarray(two_phase), atol=2e-5)


@pytest.fixture(scope="module")
def pipe(data_dir):
  return pipelines.load_pipeline(data_dir / "diffusers_tiny" / "pipeline")


def test_sweep_and_frequency_on_a_diffusers_folder(pipe, data_dir, monkeypatch, tmp_path):
  """The analysis commands' Stable Diffusion path: VAE latents for the frequency split, the acceleration
  sweep on latents decoded by the VAE (prompts tokenised by the reference ids: no transformers needed)."""
  import argparse
  from jdpm.analysis import acceleration, common, frequency
  with np.load(data_dir / "diffusers_tiny" / "reference.npz") as ref:
    ids = ref["input_ids"]
  monkeypatch.setattr(pipe, "tokenize", lambda prompts: ids[:len(prompts)])
  source = common.Source("diffusers_tiny", "latents", pipe, None, common._alphas(pipe))
  latents = source.clean_examples(2)
  assert latents.shape == (2, 8, 8, 4)
  stats = frequency.forward_statistics(latents, source.alphas_cumprod, 0.5, np.random.default_rng(0),
                                       timesteps=[0, 999])
  assert np.isfinite(stats["ratio"]).all()
  rows, images = acceleration.sweep(source, source.prompts(2), methods=["ddim"], steps=3, drops=[0, 3], repeats=0)
  assert [r["network_calls"] for r in rows] == [6, 3]
  assert rows[0]["l1_to_a0"] == 0 and rows[1]["l1_to_a0"] > 0 and "align_all" not in rows[0]
  assert images[("ddim", 3)].shape == (2, 16, 16, 3)
  with pytest.raises(ValueError, match="guidance_scale"):
    pipelines.text_to_image(pipe, input_ids=ids, steps=6, guidance_scale=None, drop_text_last=2)
  with pytest.raises(SystemExit, match="not a diffusers pipeline folder"):
    common.load_source(argparse.Namespace(model=None, pipeline=str(tmp_path)))
