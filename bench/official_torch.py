"""The PyTorch side of bench/edt_vs_mdt.py: throughput of the authors' own DiT-S/2, EDT-S/2 and MDTv2-S/2.

Optional: needs torch, timm and einops (not jdpm's dependencies) and checkouts of the official repositories:

  python bench/official_torch.py --dit DiT --edt EDT --mdt MDT [--batch 8] [--min-time 10] [--threads N]

  facebookresearch/DiT @ ed81ce2229091fd4ecc9a223645f95cf379d582b   (models.py, diffusion/)
  xinwangChen/EDT      @ 15faf9c07c7b17f1f200c54f14321a383f923c16   (models_edt.py)
  sail-sg/MDT          @ 7d26c2162c462bd0b90f97f3a1c36cdaaac616ec   (masked_diffusion/models.py)

It prints one JSON object: {"threads": N, "torch": version, "results": {family: {"batch": {b: [train img/s,
inference img/s]}}}}. bench/edt_vs_mdt.py runs it (in the interpreter given by --torch-python) so that both
sides are measured in the same run, with the same thread count and the same work:

* fp32 on the CPU, 32x32x4 latents, 1000 classes, learned sigma; x ~ N(0, 1), y = arange(b) % 1000,
  t = 7·arange(b) % 1000 (jdpm's bench/train_throughput.py inputs);
* inference: ``model.eval()`` forward under ``torch.no_grad()`` (EDT without AMM, as jdpm's side);
* training: ``model.train()``, one step = the official recipe's passes through the official Gaussian
  diffusion loss (DiT's ``diffusion`` package: MSE + learned-range VLB), backward, optimizer step. EDT adds
  the ``enable_down_mask=True`` pass and MDTv2 the ``enable_mask=True`` pass, as their training scripts do;
  DiT trains one plain pass. The optimizer is torch's AdamW for all three (the recipes' Adan costs the same
  order of a few FLOPs per parameter; jdpm's side uses AdamW too).

Nothing here imports jdpm or JAX.
"""

import argparse
import contextlib
import importlib.util
import json
import os
import pathlib
import sys
import time

COMMITS = {"dit": "ed81ce2229091fd4ecc9a223645f95cf379d582b",
           "edt": "15faf9c07c7b17f1f200c54f14321a383f923c16",
           "mdt": "7d26c2162c462bd0b90f97f3a1c36cdaaac616ec"}
FAMILIES = ("EDT", "MDTv2", "DiT")


@contextlib.contextmanager
def _on_path(path):
  path = str(pathlib.Path(path).resolve())
  sys.path.insert(0, path)
  try:
    yield
  finally:
    sys.path.remove(path)


def _load(checkout, relative, name):
  spec = importlib.util.spec_from_file_location(name, pathlib.Path(checkout) / relative)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  with _on_path(checkout):
    spec.loader.exec_module(module)
  return module


def build(family, size, checkouts):
  """(model, masked-pass keyword arguments or None) of the official implementation."""
  if family == "DiT":
    models = _load(checkouts["dit"], "models.py", "official_dit_models")
    return models.DiT_models[f"DiT-{size}/2"](input_size=32, num_classes=1000), None
  if family == "EDT":
    models = _load(checkouts["edt"], "models_edt.py", "official_edt_models")
    return getattr(models, f"EDT_{size}_2_noAMM")(input_size=32, num_classes=1000), {"enable_down_mask": True}
  models = _load(checkouts["mdt"], "masked_diffusion/models.py", "official_mdt_models")
  # decode_layer of the authors' run scripts, as jdpm's presets: S 6, B and XL 4.
  kwargs = dict(input_size=32, num_classes=1000, mask_ratio=0.3, decode_layer=6 if size == "S" else 4)
  return getattr(models, f"MDTv2_{size}_2")(**kwargs), {"enable_mask": True}


def time_fn(fn, min_time, warmup=1, min_iters=3):
  """Seconds per call, after `warmup` calls, over at least `min_iters` calls and `min_time` seconds."""
  for _ in range(warmup):
    fn()
  n, start = 0, time.perf_counter()
  while n < min_iters or time.perf_counter() - start < min_time:
    fn()
    n += 1
  return (time.perf_counter() - start) / n


def measure(family, size, batch, min_time, checkouts, diffusion):
  """(train img/s, inference img/s) of one official model."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  with contextlib.redirect_stdout(sys.stderr):  # MDTv2's constructor prints; stdout carries the JSON
    model, masked_kwargs = build(family, size, checkouts)
  x = torch.randn(batch, 4, 32, 32)
  y = torch.arange(batch) % 1000
  t = torch.arange(batch) * 7 % 1000

  model.eval()

  def infer():
    with torch.no_grad():
      model(x, t, y)

  infer_s = time_fn(infer, min_time)

  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)

  def train():
    opt.zero_grad(set_to_none=True)
    loss = diffusion.training_losses(model, x, t, model_kwargs={"y": y})["loss"].mean()
    if masked_kwargs is not None:
      masked = diffusion.training_losses(model, x, t, model_kwargs={"y": y, **masked_kwargs})
      loss = loss + masked["loss"].mean()
    loss.backward()
    opt.step()

  train_s = time_fn(train, min_time)
  return batch / train_s, batch / infer_s


def run(checkouts, size="S", batches=(8,), min_time=10.0, threads=None):
  """The JSON-able results for every family and batch size."""
  import torch  # pylint: disable=import-outside-toplevel
  threads = threads or os.cpu_count()
  torch.set_num_threads(threads)
  with _on_path(checkouts["dit"]):
    import diffusion as dit_diffusion  # pylint: disable=import-outside-toplevel
    diffusion = dit_diffusion.create_diffusion(timestep_respacing="")
  results = {}
  for family in FAMILIES:
    for b in batches:
      train_ips, infer_ips = measure(family, size, b, min_time, checkouts, diffusion)
      results.setdefault(family, {})[str(b)] = [train_ips, infer_ips]
      print(f"official {family}-{size}/2 batch {b}: train {train_ips:.2f} img/s, "
            f"inference {infer_ips:.2f} img/s", file=sys.stderr, flush=True)
  return {"threads": threads, "torch": torch.__version__, "commits": COMMITS, "results": results}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  for name in ("dit", "edt", "mdt"):
    p.add_argument(f"--{name}", required=True, help=f"official checkout ({COMMITS[name][:7]})")
  p.add_argument("--size", default="S", choices=["S", "B", "XL"])
  p.add_argument("--batch", type=int, nargs="+", default=[8])
  p.add_argument("--min-time", type=float, default=10.0)
  p.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPU cores, as XLA)")
  args = p.parse_args()
  checkouts = {"dit": args.dit, "edt": args.edt, "mdt": args.mdt}
  print(json.dumps(run(checkouts, args.size, args.batch, args.min_time, args.threads)))


if __name__ == "__main__":
  main()
