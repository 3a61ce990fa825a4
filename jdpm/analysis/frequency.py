"""Frequency split of diffusion states: a radial low-pass in the 2-D Fourier domain.

The forward process x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε adds white noise, whose power is the same at every spatial
frequency, while natural (and rendered) images put most of theirs at low frequencies. With the orthonormal
FFT, a band B of |B| frequencies of x_0 with mean power P_B per frequency and channel has the signal-to-noise
ratio

    SNR_B(t) = ᾱ_t · P_B / (1 − ᾱ_t),

so the low band stays above the noise until ᾱ_t ≈ 1/(1 + P_low), much later in the forward process (much
earlier in generation) than the high band: the image's overall shape is decided in the first denoising
steps, its details last (the paper's Fig. 2).

    python -m jdpm.analysis.frequency --out figs/frequency [--model DIR | --pipeline SD_FOLDER] --cutoff 0.25
"""

import argparse
import json
import pathlib

import numpy as np


def radial_mask(height, width, cutoff):
  """(height, width) bool mask of the frequencies with radius ≤ cutoff · Nyquist, in np.fft's layout.

  cutoff is a fraction of the Nyquist frequency (0.5 cycles per pixel): 0 keeps the mean only, 1 the disc
  inscribed in the spectrum, √2 everything."""
  if not cutoff >= 0:
    raise ValueError(f"cutoff must be >= 0 (a fraction of the Nyquist frequency); got {cutoff}.")
  fy, fx = np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij")
  return np.sqrt(fx**2 + fy**2) <= cutoff * 0.5 + 1e-12


def split(x, cutoff):
  """(low, high) parts of x (..., H, W, C) with low + high = x and the two orthogonal (real arrays)."""
  x = np.asarray(x, np.float64)
  mask = radial_mask(x.shape[-3], x.shape[-2], cutoff)[:, :, None]
  spectrum = np.fft.fft2(x, axes=(-3, -2))
  low = np.real(np.fft.ifft2(spectrum * mask, axes=(-3, -2)))
  return low, x - low


def band_power(x, cutoff):
  """Mean power per frequency and channel of x (N, H, W, C) in the low and high bands (orthonormal FFT,
  averaged over the N examples): (P_low, P_high)."""
  x = np.asarray(x, np.float64)
  mask = radial_mask(x.shape[-3], x.shape[-2], cutoff)
  power = np.abs(np.fft.fft2(x, axes=(-3, -2), norm="ortho")) ** 2
  power = power.mean(axis=(0, -1))  # (H, W)
  return float(power[mask].mean()), float(power[~mask].mean()) if (~mask).any() else float("nan")


def band_snr(alphas_cumprod, powers):
  """Per-band SNR ᾱ P / (1 − ᾱ) for each ᾱ (T,) and band power: (T, bands)."""
  a = np.asarray(alphas_cumprod, np.float64)[:, None]
  return a * np.asarray(powers, np.float64)[None] / (1.0 - a)


def crossing_step(alphas_cumprod, power):
  """The first training step t (0-based) at which a band of mean power `power` has SNR ≤ 1 (the noise
  swamps it), and the exact ᾱ of that crossing, 1 / (1 + power); t = T when it never crosses."""
  snr = band_snr(alphas_cumprod, [power])[:, 0]
  below = np.flatnonzero(snr <= 1.0)
  return (int(below[0]) if len(below) else len(snr)), 1.0 / (1.0 + power)


def forward_statistics(x0, alphas_cumprod, cutoff, rng, timesteps=None):
  """Norms of the low / high parts of x_t over t on the forward process, one noise draw per t.

  Args:
    x0: (N, H, W, C) clean images (or latents).
    alphas_cumprod: (T,) ᾱ of the discrete schedule.
    cutoff: low-pass radius as a fraction of Nyquist.
    rng: a numpy Generator.
    timesteps: which t to evaluate (default: all).
  Returns:
    dict of (len(timesteps),) arrays: "t", "low_norm", "high_norm" (mean per-example L2 norms of x_t's
    parts), "ratio" (high / low), "snr_low", "snr_high" (analytic from x0's band powers), and the scalars
    "power_low", "power_high", "cross_low", "cross_high" (crossing steps).
  """
  alphas_cumprod = np.asarray(alphas_cumprod, np.float64)
  timesteps = np.arange(len(alphas_cumprod)) if timesteps is None else np.asarray(timesteps)
  x0 = np.asarray(x0, np.float64)
  low_norm, high_norm = [], []
  for t in timesteps:
    a = alphas_cumprod[t]
    xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * rng.standard_normal(x0.shape)
    low, high = split(xt, cutoff)
    low_norm.append(np.linalg.norm(low.reshape(len(x0), -1), axis=1).mean())
    high_norm.append(np.linalg.norm(high.reshape(len(x0), -1), axis=1).mean())
  p_low, p_high = band_power(x0, cutoff)
  snr = band_snr(alphas_cumprod[timesteps], [p_low, p_high])
  low_norm, high_norm = np.asarray(low_norm), np.asarray(high_norm)
  return {"t": timesteps, "low_norm": low_norm, "high_norm": high_norm, "ratio": high_norm / low_norm,
          "snr_low": snr[:, 0], "snr_high": snr[:, 1], "power_low": p_low, "power_high": p_high,
          "cross_low": crossing_step(alphas_cumprod, p_low)[0],
          "cross_high": crossing_step(alphas_cumprod, p_high)[0]}


def trajectory_statistics(states, cutoff):
  """Low / high norms and their ratio along a sampling trajectory `states` (S + 1, N, H, W, C)."""
  low, high = split(np.asarray(states), cutoff)
  norm = lambda v: np.linalg.norm(v.reshape(v.shape[0], v.shape[1], -1), axis=-1).mean(axis=1)
  low_norm, high_norm = norm(low), norm(high)
  return {"low_norm": low_norm, "high_norm": high_norm, "ratio": high_norm / np.maximum(low_norm, 1e-12)}


def _plot(stats, reverse, path, title):
  from jdpm.analysis import common  # pylint: disable=import-outside-toplevel
  plt = common.pyplot()
  panels = 3 if reverse is None else 4
  fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4))
  t = stats["t"]
  axes[0].plot(t, stats["low_norm"], label="low-frequency part")
  axes[0].plot(t, stats["high_norm"], label="high-frequency part")
  axes[0].set(xlabel="forward step t", ylabel="mean ||part of x_t||", title="forward: norms")
  axes[0].legend(fontsize=7)
  axes[1].plot(t, stats["ratio"])
  axes[1].set(xlabel="forward step t", ylabel="||high|| / ||low||", title="forward: ratio")
  axes[2].semilogy(t, stats["snr_low"], label=f"low (crosses 1 at t={stats['cross_low']})")
  axes[2].semilogy(t, stats["snr_high"], label=f"high (crosses 1 at t={stats['cross_high']})")
  axes[2].axhline(1.0, color="k", lw=0.5)
  axes[2].set(xlabel="forward step t", ylabel="ᾱP/(1−ᾱ)", title="per-band SNR")
  axes[2].legend(fontsize=7)
  if reverse is not None:
    steps = np.arange(len(reverse["low_norm"]))
    axes[3].plot(steps, reverse["low_norm"], label="low part of x_t")
    axes[3].plot(steps, reverse["high_norm"], label="high part of x_t")
    # x̂0 is predicted at each evaluation, i.e. from the state before each step.
    evals = np.arange(len(reverse["x0_low_norm"]))
    axes[3].plot(evals, reverse["x0_low_norm"], "--", label="low part of x̂0")
    axes[3].plot(evals, reverse["x0_high_norm"], "--", label="high part of x̂0")
    axes[3].set(xlabel="sampling step", ylabel="mean norm", title="reverse process")
    axes[3].legend(fontsize=7)
  common.save_figure(fig, path, title)


def main(argv=None):
  from jdpm.analysis import common  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(description="Frequency split of x_t: forward and reverse process.")
  common.add_source_arguments(p)
  p.add_argument("--cutoff", type=float, default=0.25, help="low-pass radius, fraction of Nyquist")
  p.add_argument("--num_images", type=int, default=64)
  args = p.parse_args(argv)
  out = common.out_dir(args.out)
  source = common.load_source(args)
  x0 = source.clean_examples(args.num_images, seed=args.seed)
  stats = forward_statistics(x0, source.alphas_cumprod, args.cutoff, np.random.default_rng(args.seed),
                             timesteps=np.arange(0, len(source.alphas_cumprod), 10))
  reverse = None
  if source.pipeline is not None:
    run = common.sample_with_trajectory(source, source.prompts(args.num_prompts), steps=args.steps,
                                        method=args.method, guidance_scale=args.cfg_scale, seed=args.seed)
    reverse = trajectory_statistics(run["trajectory"], args.cutoff)
    x0_stats = trajectory_statistics(run["x0_pred"], args.cutoff)
    reverse.update(x0_low_norm=x0_stats["low_norm"], x0_high_norm=x0_stats["high_norm"])
  _plot(stats, reverse, out / "frequency.png", f"{source.name}: cutoff {args.cutoff} x Nyquist, "
        f"{source.kind} of shape {x0.shape[1:]}")
  numbers = {"source": source.name, "cutoff": args.cutoff, "power_low": stats["power_low"],
             "power_high": stats["power_high"], "cross_low": stats["cross_low"], "cross_high": stats["cross_high"],
             "alpha_bar_cross_low": 1 / (1 + stats["power_low"]), "alpha_bar_cross_high": 1 / (1 + stats["power_high"]),
             "num_timesteps": len(source.alphas_cumprod)}
  if reverse is not None:
    numbers["reverse_ratio"] = [float(v) for v in reverse["ratio"]]
  (out / "frequency.json").write_text(json.dumps(numbers, indent=1))
  print(json.dumps({k: v for k, v in numbers.items() if k != "reverse_ratio"}, indent=1))
  return numbers


if __name__ == "__main__":
  main()
