"""Cross-attention over the sampling steps: per-token maps, the [SOS] share, shape formation and the
per-token relative F1.

Definitions (jdpm's; the paper gives no code):
  token maps   every cross-attention layer's probabilities (B, heads, h·w, L), averaged over heads,
               resized bilinearly to the state's size and averaged over layers: (B, H, W, L), still summing
               to 1 over the L tokens at each pixel;
  shape mask   pixels whose colour deviates from the median of the image border by more than half the
               image's largest deviation (`shape_mask`; for the built-in scenes, the objects);
  shape IoU    IoU of the shape mask of x̂0 predicted at each step with that of the final image;
  relative F1  a token's map binarised at its spatial mean, F1 against the final image's shape mask, divided
               by the same F1 at the last step: 1 means the map already has its final shape.

    python -m jdpm.analysis.attention --model DIR --out figs/attention
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from jdpm.models import unet as unet_lib


def capture_maps(unet, variables, x, t_model, context):
  """{layer name: probs (B, heads, h·w, L)} of one capturing UNet call (t_model: the network's time)."""
  _, state = unet.apply(variables, x, t_model, context, capture_cross_attention=True,
                        mutable=["intermediates"])
  return {name: v["probs"] for name, v in unet_lib.cross_attention_maps(state).items()}


def token_maps(maps, size):
  """Layer- and head-averaged per-token maps (B, size[0], size[1], L) from `capture_maps`."""
  out = 0.0
  for probs in maps.values():
    b, _, n, length = probs.shape
    side = int(round(np.sqrt(n * size[0] / size[1])))
    per_layer = probs.mean(axis=1).reshape(b, side, n // side, length)
    out = out + jax.image.resize(per_layer, (b, size[0], size[1], length), "bilinear")
  return out / len(maps)


def token_share(maps):
  """(B, L) mean attention probability of each token over layers, heads and pixels ([SOS] is token 0)."""
  return sum(p.mean(axis=(1, 2)) for p in maps.values()) / len(maps)


def shape_mask(images):
  """(N, H, W) bool: pixels deviating from the border's median colour by over half the largest deviation."""
  x = np.asarray(images, np.float64)
  border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)  # (N, 2H + 2W, C)
  deviation = np.linalg.norm(x - np.median(border, axis=1)[:, None, None], axis=-1)
  return deviation > 0.5 * deviation.max(axis=(1, 2), keepdims=True)


def iou(a, b):
  """(N,) IoU of boolean masks (N, H, W); 1 where both are empty."""
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  inter, union = (a & b).sum(axis=(1, 2)), (a | b).sum(axis=(1, 2))
  return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def f1(pred, true):
  """(N,) F1 of boolean masks (N, H, W) against reference masks."""
  pred, true = np.asarray(pred, bool), np.asarray(true, bool)
  tp = (pred & true).sum(axis=(1, 2))
  denominator = pred.sum(axis=(1, 2)) + true.sum(axis=(1, 2))
  return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 1.0)


def map_f1(maps, mask):
  """(S, N, L) F1 of every token map (S, N, H, W, L), binarised at its spatial mean, against mask (N, H, W)."""
  maps = np.asarray(maps)
  binary = maps > maps.mean(axis=(2, 3), keepdims=True)
  s, n, _, _, length = maps.shape
  out = np.empty((s, n, length))
  for i in range(s):
    for token in range(length):
      out[i, :, token] = f1(binary[i, :, :, :, token], mask)
  return out


def relative_f1(maps, mask):
  """(S, N, L) `map_f1` divided by its value at the last step (NaN where that is 0)."""
  scores = map_f1(maps, mask)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(scores[-1:] > 0, scores / scores[-1:], np.nan)


def maps_over_steps(pipe, trajectory, timesteps, context):
  """(S, B, H, W, L) token maps of the conditional branch at each sampling step's input state."""
  unet, sched = pipe.unet, pipe.schedule
  capture = jax.jit(lambda v, x, t, c: capture_maps(unet, v, x, t, c))
  size = trajectory.shape[2:4]
  out = []
  for state, t in zip(trajectory[:-1], np.asarray(timesteps)[:-1]):
    t_model = jnp.full((state.shape[0],), (float(t) - 1.0 / sched.total_n) * 1000.0)
    out.append(np.asarray(token_maps(capture(pipe.unet_variables, jnp.asarray(state), t_model, context), size)))
  return np.stack(out)


def analyse(source, prompts, *, steps, method, guidance_scale, seed=0):
  """Samples `prompts` with trajectories and returns the per-step statistics (see the module docstring):
  dict with "maps" (S, B, H, W, L), "shares" (S, B, L), "shape_iou" (NFE, B), "relative_f1" (S, B, L),
  "ids" (B, L), "images", "final_mask"."""
  from jdpm.analysis import common  # pylint: disable=import-outside-toplevel
  pipe = source.pipeline
  run = common.sample_with_trajectory(source, prompts, steps=steps, method=method,
                                      guidance_scale=guidance_scale, seed=seed)
  ids = pipe.tokenize(list(prompts))
  context = pipe.encode(ids)
  maps = maps_over_steps(pipe, run["trajectory"], run["timesteps"], context)
  final_mask = shape_mask(run["latents"])
  x0_masks = np.stack([shape_mask(x0) for x0 in run["x0_pred"]])
  return {"maps": maps, "shares": token_share_from_maps(maps), "ids": ids, "images": run["images"],
          "shape_iou": np.stack([iou(m, final_mask) for m in x0_masks]), "final_mask": final_mask,
          "relative_f1": relative_f1(maps, final_mask), "x0_pred": run["x0_pred"]}


def token_share_from_maps(maps):
  """(S, B, L) spatial mean of the token maps (the same as `token_share` up to the resizing)."""
  return np.asarray(maps).mean(axis=(2, 3))


def token_groups(ids, sos_id, eos_id):
  """{"[SOS]", "words", "[EOS]"}: (B, L) bool masks of the token kinds."""
  ids = np.asarray(ids)
  sos = np.zeros_like(ids, bool)
  sos[:, 0] = True
  eos = (ids == eos_id) & ~sos
  return {"[SOS]": sos, "words": ~sos & ~eos, "[EOS]": eos}


def group_mean(values, mask):
  """(S,) mean over batch and the masked tokens of values (S, B, L) (NaNs ignored)."""
  v = np.where(mask[None], values, np.nan)
  with np.errstate(invalid="ignore"):
    return np.nanmean(v.reshape(v.shape[0], -1), axis=1)


def _plots(result, tokens, out, title):
  from jdpm.analysis import common  # pylint: disable=import-outside-toplevel
  plt = common.pyplot()
  groups = result["groups"]
  steps = np.arange(result["maps"].shape[0])
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
  for name, mask in groups.items():
    axes[0].plot(steps, group_mean(result["shares"], mask), label=name)
    axes[1].plot(steps, group_mean(result["relative_f1"], mask), label=name)
  axes[0].set(xlabel="sampling step", ylabel="mean attention per token", title="cross-attention share")
  axes[1].set(xlabel="sampling step", ylabel="F1 / final F1", title="relative F1 of token maps")
  axes[2].plot(np.arange(result["shape_iou"].shape[0]), result["shape_iou"].mean(axis=1))
  axes[2].set(xlabel="model evaluation", ylabel="IoU with final", title="shape of x̂0 vs final image")
  for ax in axes[:2]:
    ax.legend(fontsize=7)
  common.save_figure(fig, out / "attention_stats.png", title)
  # Per-token maps of the first prompt at a few steps.
  maps = result["maps"][:, 0]
  rows = sorted(set(np.linspace(0, maps.shape[0] - 1, 4).astype(int)))
  cols = min(len(tokens), maps.shape[-1])
  fig, axes = plt.subplots(len(rows), cols + 1, figsize=(1.3 * (cols + 1), 1.4 * len(rows)), squeeze=False)
  image = np.clip((np.asarray(result["images"][0]) + 1) / 2, 0, 1)
  for r, step in enumerate(rows):
    axes[r, 0].imshow(image, interpolation="nearest")
    axes[r, 0].set_title(f"step {step}", fontsize=6)
    for c in range(cols):
      axes[r, c + 1].imshow(maps[step, :, :, c], cmap="viridis")
      axes[r, c + 1].set_title(tokens[c], fontsize=5)
  for ax in axes.flat:
    ax.axis("off")
  common.save_figure(fig, out / "attention_maps.png", dpi=120)


def main(argv=None):
  from jdpm.analysis import common  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(description="Per-token cross-attention over the sampling steps.")
  common.add_source_arguments(p)
  args = p.parse_args(argv)
  source = common.model_source(args, "the attention analysis")
  out = common.out_dir(args.out)
  prompts = source.prompts(args.num_prompts, seed=args.seed)
  result = analyse(source, prompts, steps=args.steps, method=args.method, guidance_scale=args.cfg_scale,
                   seed=args.seed)
  sos_id, eos_id = int(result["ids"][0, 0]), int(result["ids"][0, -1])
  result["groups"] = token_groups(result["ids"], sos_id, eos_id)
  tokens = _token_names(source, result["ids"][0])
  _plots(result, tokens, out, f"{source.name}: {len(prompts)} prompts, {args.method} {args.steps} steps")
  numbers = {"prompts": prompts,
             "share_per_step": {k: [float(v) for v in group_mean(result["shares"], m)]
                                for k, m in result["groups"].items()},
             "sos_share_first_last": [float(result["shares"][0, :, 0].mean()), float(result["shares"][-1, :, 0].mean())],
             "relative_f1_per_step": {k: [float(v) for v in group_mean(result["relative_f1"], m)]
                                      for k, m in result["groups"].items()},
             "shape_iou_per_eval": [float(v) for v in result["shape_iou"].mean(axis=1)]}
  (out / "attention.json").write_text(json.dumps(numbers, indent=1))
  print(json.dumps({k: numbers[k] for k in ("sos_share_first_last", "shape_iou_per_eval")}, indent=1))
  return numbers


def _token_names(source, ids):
  pipe = source.pipeline
  if pipe.word_tokenizer is not None:
    return pipe.word_tokenizer.decode(ids)
  try:
    return [t.replace("</w>", "") for t in pipe.tokenizer().convert_ids_to_tokens([int(i) for i in ids])]
  except (ImportError, ValueError):
    return [str(int(i)) for i in ids]


if __name__ == "__main__":
  main()
