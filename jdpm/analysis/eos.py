"""The [EOS] experiments: which text tokens decide the generated content, and when.

After a causal text encoder, each [EOS] state has seen the whole prompt. The experiments edit the encoded
context of prompt A (B, L, D) and generate with it:
  swap          A's [EOS] states replaced by prompt B's (the same positions): does the image follow B?
  swap from a   the swapped context only from sampling step a on (A's own before): B wins only if the
                swap starts early, when the content is decided;
  count         only the first n [EOS] states swapped;
  zero/random   the semantic tokens (words) of A zeroed or replaced by Gaussian noise of the same norm,
                keeping [SOS] and [EOS]; and the converse ([EOS] zeroed / random, words kept);
  keys / values B's [EOS] in the keys only or the values only of every cross-attention layer
                (`jdpm.models.unet.TokenSubstitution`).
Alignment is measured with the built-in proxy classifier (does the object's shape / colour follow A or B?)
and, for any model, by which baseline image (A's or B's) the edited image is closer to in pixels.

    python -m jdpm.analysis.eos --model DIR --out figs/eos
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from jdpm import pipelines
from jdpm.models import unet as unet_lib


def swap_eos(context_a, context_b, eos_mask, count=None):
  """A's context with the states at its [EOS] positions taken from B's context.

  Args:
    context_a, context_b: (B, L, D) encoded prompts A and B.
    eos_mask: (B, L) bool, A's [EOS] positions (the end token and the [EOS] padding).
    count: swap only the first `count` [EOS] positions of each row (None: all).
  Returns:
    (B, L, D); every other position is A's, bit for bit.
  """
  mask = _first(np.asarray(eos_mask, bool), count)
  return jnp.where(jnp.asarray(mask)[..., None], context_b, context_a)


def _first(mask, count):
  if count is None:
    return mask
  return mask & (np.cumsum(mask, axis=1) <= count)


def replace_tokens(context, mask, mode, rng=None):
  """context (B, L, D) with the masked positions (B, L) zeroed ("zero") or replaced by Gaussian vectors of
  the same norm as the states they replace ("random", needs a PRNG key)."""
  mask = jnp.asarray(mask)[..., None]
  if mode == "zero":
    return jnp.where(mask, 0.0, context)
  if mode == "random":
    noise = jax.random.normal(rng, context.shape, context.dtype)
    noise = noise / jnp.linalg.norm(noise, axis=-1, keepdims=True) * jnp.linalg.norm(context, axis=-1, keepdims=True)
    return jnp.where(mask, noise, context)
  raise ValueError(f"mode must be 'zero' or 'random'; got {mode!r}.")


def switching_apply(unet, t_switch):
  """apply(variables, x, t, {"early", "late"}) using the "early" context while the network time t is above
  t_switch (the first steps of sampling) and the "late" one afterwards."""

  def apply(variables, x, t, context):
    late = (t <= t_switch)[:, None, None]
    return unet.apply(variables, x, t, jnp.where(late, context["late"], context["early"]))

  return apply


def substituting_apply(unet, other_context, positions, keys, values):
  """apply(variables, x, t, context) with B's keys and/or values at the given positions (B, L) of the
  conditional rows; in a guided call (doubled batch [cond; null]) the null rows are left alone."""
  positions = jnp.asarray(positions, bool)

  def apply(variables, x, t, context):
    reps = x.shape[0] // other_context.shape[0]
    mask = jnp.concatenate([positions] + [jnp.zeros_like(positions)] * (reps - 1))
    sub = unet_lib.TokenSubstitution(jnp.concatenate([other_context] * reps), mask, keys=keys, values=values)
    return unet.apply(variables, x, t, context, substitute=sub)

  return apply


def network_time(pipe, steps, method, step):
  """The network time input of sampling step `step` (0-based) of a run with `steps` steps."""
  from jdpm import samplers  # pylint: disable=import-outside-toplevel
  plan = samplers.make_plan(pipe.schedule, method=method, steps=steps, order=1 if method == "ddim" else 2)
  t = float(np.asarray(plan.timesteps)[step])
  return (t - 1.0 / pipe.schedule.total_n) * 1000.0


def pairs(n, seed=0):
  """n (A, B) single-object prompt pairs whose shapes and colours differ (sizes: both big)."""
  from jdpm.data import captioned_shapes as cs  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  out = []
  while len(out) < n:
    sa, sb = rng.choice(cs.SHAPES, 2, replace=False)
    ca, cb = rng.choice(cs.COLOUR_NAMES, 2, replace=False)
    out.append((f"a big {ca} {sa}", f"a big {cb} {sb}"))
  return out


def run_experiments(source, prompt_pairs, *, steps, method, guidance_scale, seed=0, switch_steps=None,
                    counts=(1, 2, 4)):
  """Generates every experiment's images; returns {experiment name: images (N, H, W, 3)} with the
  baselines "A" and "B"."""
  pipe = source.pipeline
  ids_a = pipe.tokenize([a for a, _ in prompt_pairs])
  ids_b = pipe.tokenize([b for _, b in prompt_pairs])
  ctx_a, ctx_b = pipe.encode(ids_a), pipe.encode(ids_b)
  eos_id = int(ids_a[0, -1])
  eos = (ids_a == eos_id) & (ids_b == eos_id)
  eos[:, 0] = False
  words = ~eos
  words[:, 0] = False
  null = pipe.encode(pipe.empty_prompt_ids())[0]
  def gen(context, null_context=null, apply_fn=None):
    return np.asarray(pipelines.text_to_image(
        pipe, context=context, null_context=null_context, steps=steps, method=method,
        order=1 if method == "ddim" else 2, guidance_scale=guidance_scale, seed=seed, apply_fn=apply_fn)["images"])

  swapped = swap_eos(ctx_a, ctx_b, eos)
  out = {"A": gen(ctx_a), "B": gen(ctx_b), "swap": gen(swapped)}
  for count in counts:
    out[f"swap first {count}"] = gen(swap_eos(ctx_a, ctx_b, eos, count))
  switch_steps = switch_steps or sorted({steps // 4, steps // 2, 3 * steps // 4})
  for a in switch_steps:
    apply = switching_apply(pipe.unet, network_time(pipe, steps, method, a))
    out[f"swap from step {a}"] = gen({"early": ctx_a, "late": swapped}, {"early": null, "late": null}, apply)
    out[f"swap until step {a}"] = gen({"early": swapped, "late": ctx_a}, {"early": null, "late": null}, apply)
  key = jax.random.key(seed + 7)
  out["words zero"] = gen(replace_tokens(ctx_a, words, "zero"))
  out["words random"] = gen(replace_tokens(ctx_a, words, "random", key))
  out["[EOS] zero"] = gen(replace_tokens(ctx_a, eos, "zero"))
  out["[EOS] random"] = gen(replace_tokens(ctx_a, eos, "random", key))
  for keys, values, name in ((True, False, "keys only"), (False, True, "values only")):
    out[f"swap {name}"] = gen(ctx_a, apply_fn=substituting_apply(pipe.unet, ctx_b, eos, keys, values))
  return out


def follow_rates(source, prompt_pairs, images):
  """{experiment: {metric: fraction}}: proxy shape / colour of A vs B (built-in model) and which baseline
  image is nearer in mean absolute pixel difference (any model)."""
  from jdpm.data import captioned_shapes as cs  # pylint: disable=import-outside-toplevel
  from jdpm.t2i import bundle  # pylint: disable=import-outside-toplevel
  rates = {}
  want_a = cs.label_arrays([a for a, _ in prompt_pairs])
  want_b = cs.label_arrays([b for _, b in prompt_pairs])
  for name, x in images.items():
    l1 = lambda ref: np.abs(x - ref).mean(axis=(1, 2, 3))
    r = {"nearer B": float(np.mean(l1(images["B"]) < l1(images["A"])))}
    if source.builtin:
      got = bundle.predict(source.proxy_variables, x)
      for head, label in (("shape0", "shape"), ("colour0", "colour")):
        r[f"{label} = A"] = float(np.mean(got[head] == want_a[head]))
        r[f"{label} = B"] = float(np.mean(got[head] == want_b[head]))
    rates[name] = r
  return rates


def main(argv=None):
  from jdpm.analysis import common  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(description="The [EOS] experiments.")
  common.add_source_arguments(p)
  p.add_argument("--num_pairs", type=int, default=32)
  p.add_argument("--pairs", nargs="*", default=None, help="'prompt A|prompt B' pairs (default: drawn)")
  args = p.parse_args(argv)
  source = common.model_source(args, "the [EOS] experiments")
  out = common.out_dir(args.out)
  if args.pairs:
    prompt_pairs = [tuple(s.split("|", 1)) for s in args.pairs]
  elif source.builtin:
    prompt_pairs = pairs(args.num_pairs, args.seed)
  else:
    prompts = common.SD_PROMPTS
    prompt_pairs = [(prompts[i % len(prompts)], prompts[(i + 3) % len(prompts)]) for i in range(args.num_pairs)]
  images = run_experiments(source, prompt_pairs, steps=args.steps, method=args.method,
                           guidance_scale=args.cfg_scale, seed=args.seed)
  rates = follow_rates(source, prompt_pairs, images)
  show = min(4, len(prompt_pairs))
  names = list(images)
  grid = np.concatenate([images[n][:show] for n in names])
  titles = [f"{n}\n{prompt_pairs[i][0]} / {prompt_pairs[i][1]}" if n in ("A", "swap") else n
            for n in names for i in range(show)]
  common.image_grid(grid, titles, out / "eos_images.png", columns=show,
                    title=f"{source.name}: [EOS] experiments (rows), first {show} pairs (columns)")
  (out / "eos.json").write_text(json.dumps({"pairs": prompt_pairs, "rates": rates}, indent=1))
  for name, r in rates.items():
    print(f"{name:22s} " + "  ".join(f"{k} {v:.2f}" for k, v in r.items()))
  return rates


if __name__ == "__main__":
  main()
