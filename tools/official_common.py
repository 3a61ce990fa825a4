"""Shared helpers of the reference-data scripts in tools/ (needs torch; never imported by jdpm).

Every ``make_*_reference.py`` script runs the *official* code of a paper, imported from a local
checkout whose path it is given, and either writes its reference ``.npz`` into tests/data or,
with ``--check``, recomputes it and compares with the stored file. The official code itself is
never part of this repository.

The network references share one recipe (see tests/data's docstrings in the tests):
* inputs: ``x = torch.randn(3, 4, 32, 32)`` from ``torch.Generator().manual_seed(1)``,
  ``t = [0, 421, 999]``, ``y = [3, 7, 10]`` (10 = the null class), CFG batch ``concat(x, x)``
  with labels ``[3, 7, 1, 10, 10, 10]``;
* parameters: one ``torch.Generator().manual_seed(0)``; every floating state-dict entry, in
  state-dict order, that is not a frozen table becomes ``randn(shape) * std`` (so the official
  zero-initialised adaLN and final layers do not hide errors); std 0.02 and 0.1 use the same draws.
"""

import argparse
import contextlib
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"

PARAM_SEED = 0
INPUT_SEED = 1
INPUT_T = [0, 421, 999]
INPUT_Y = [3, 7, 10]
INPUT_Y_CFG = [3, 7, 1, 10, 10, 10]
# Float32 outputs of the official networks: bit-exact on the CPU that made them; elsewhere
# within float32 rounding (max |diff| / max |stored|).
NETWORK_TOL = {"out/": 1e-5, "act/": 1e-5}


def parser(description, checkouts):
  """An argument parser with one ``--<name>`` checkout path per entry of ``checkouts``
  ({name: (repository, commit)}), ``--out`` and ``--check``."""
  p = argparse.ArgumentParser(description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  for name, (repo, commit) in checkouts.items():
    p.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, type=pathlib.Path,
                   help=f"checkout of github.com/{repo} at commit {commit}")
  p.add_argument("--out", type=pathlib.Path, default=DATA,
                 help="folder to write to (default: tests/data)")
  p.add_argument("--check", action="store_true",
                 help="recompute and compare with the stored files instead of writing them")
  return p


def verify_checkout(path, repo, commit, files):
  """Fails unless ``path`` holds ``files``; when it is a git work tree, also unless its HEAD is
  ``commit`` (an exported tree without .git cannot be verified and only gets a note)."""
  path = pathlib.Path(path)
  for f in files:
    if not (path / f).is_file():
      raise SystemExit(f"{path} does not look like a checkout of {repo}: {f} is missing.")
  try:
    head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
  except (subprocess.CalledProcessError, FileNotFoundError):
    print(f"note: {path} is not a git work tree; expecting {repo} @ {commit}")
    return
  if head != commit:
    raise SystemExit(f"{path} is at {head}, expected {repo} @ {commit}.")


@contextlib.contextmanager
def on_path(path):
  """Puts a checkout first on sys.path (its modules import each other by top-level names) and
  forgets the modules imported from it afterwards, so two checkouts with equally named modules
  (e.g. ``diffusion``) can be used one after the other."""
  path = str(pathlib.Path(path).resolve())
  before = set(sys.modules)
  sys.path.insert(0, path)
  try:
    yield
  finally:
    sys.path.remove(path)
    for name in set(sys.modules) - before:
      module = sys.modules[name]
      if str(getattr(module, "__file__", "") or "").startswith(path):
        del sys.modules[name]


def load_module(path, relative_file, name):
  """Imports one file of a checkout as module ``name`` (the checkout must be on sys.path)."""
  spec = importlib.util.spec_from_file_location(name, pathlib.Path(path) / relative_file)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def network_inputs():
  """The shared network inputs as numpy arrays (NCHW, as the official code takes them)."""
  import torch  # pylint: disable=import-outside-toplevel
  g = torch.Generator().manual_seed(INPUT_SEED)
  x = torch.randn(3, 4, 32, 32, generator=g)
  t = torch.tensor(INPUT_T, dtype=torch.int64)
  y = torch.tensor(INPUT_Y, dtype=torch.int64)
  return {"input/x": x.numpy(), "input/t": t.numpy(), "input/y": y.numpy(),
          "input/x_cfg": torch.cat([x, x]).numpy(), "input/t_cfg": torch.cat([t, t]).numpy(),
          "input/y_cfg": np.asarray(INPUT_Y_CFG, np.int64)}


def randomise(model, std, keep=(), seed=PARAM_SEED):
  """Overwrites every floating state-dict entry not in ``keep`` by ``randn(shape) * std`` drawn,
  in state-dict order, from one ``torch.Generator().manual_seed(seed)``. Returns the state dict
  as numpy (integer buffers included)."""
  import torch  # pylint: disable=import-outside-toplevel
  g = torch.Generator().manual_seed(seed)
  state = model.state_dict()
  new = {}
  for name, value in state.items():
    if value.is_floating_point() and name not in keep:
      value = (torch.randn(value.shape, generator=g) * std).to(value.dtype)
    new[name] = value
  model.load_state_dict(new)
  return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def capture(model, names):
  """Records ``output[:1]`` of each named submodule's forward into the yielded dict."""
  out, handles = {}, []
  modules = dict(model.named_modules())
  for name in names:
    def hook(_module, _inputs, output, name=name):
      out[name] = output[:1].detach().cpu().numpy().copy()
    handles.append(modules[name].register_forward_hook(hook))
  try:
    yield out
  finally:
    for h in handles:
      h.remove()


def to_numpy(tensor):
  return tensor.detach().cpu().numpy()


def save_or_check(path, arrays, check, tolerances=None):
  """Writes ``arrays`` to ``path`` (np.savez_compressed), or with ``check`` compares them with
  the stored file: the same keys, shapes and dtypes, and values equal exactly unless
  ``tolerances`` ({key prefix: tol}, longest prefix wins) allows max |new − stored| ≤
  tol · max |stored| for that array (the error measure of the tests). Float32 network outputs are
  reproducible bit for bit only on the same kind of CPU (the vectorised kernels differ), hence
  tolerances for them.

  Returns True when the check passed (always True when writing)."""
  path = pathlib.Path(path)
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  if not check:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({len(arrays)} arrays)")
    return True
  tolerances = tolerances or {}
  if not path.is_file():
    print(f"  MISMATCH {path} does not exist")
    return False
  with np.load(path, allow_pickle=False) as f:
    stored = {k: f[k] for k in f.files}
  problems = []
  if set(stored) != set(arrays):
    problems.append(f"keys differ: only stored {sorted(set(stored) - set(arrays))[:8]}, "
                    f"only recomputed {sorted(set(arrays) - set(stored))[:8]}")
  exact, worst = 0, {}
  for key in sorted(set(stored) & set(arrays)):
    a, b = arrays[key], stored[key]
    if a.shape != b.shape or a.dtype != b.dtype:
      problems.append(f"{key}: {a.dtype}{a.shape} recomputed vs {b.dtype}{b.shape} stored")
      continue
    if np.array_equal(a, b):
      exact += 1
      continue
    prefix = max((p for p in tolerances if key.startswith(p)), key=len, default=None)
    if prefix is None or a.dtype.kind not in "fc":
      diff = np.max(np.abs(a.astype(np.float64) - b)) if a.dtype.kind in "fciub" else "n/a"
      problems.append(f"{key}: not bit-exact (max abs diff {diff})")
      continue
    tol = tolerances[prefix]
    err = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
    worst[prefix] = max(worst.get(prefix, 0.0), err)
    if not err <= tol:
      problems.append(f"{key}: max|diff|/max|stored| = {err:.3g} > {tol:g}")
  print(f"{path.name}: {exact}/{len(stored)} arrays bit-exact", end="")
  for prefix, err in sorted(worst.items()):
    print(f"; '{prefix}*' max|diff|/max|stored| {err:.2g} (allowed {tolerances[prefix]:g})", end="")
  print()
  for p in problems:
    print(f"  MISMATCH {p}")
  return not problems


def check_written(new_path, stored_path, tolerances=None):
  """``--check`` for scripts that write their file themselves: compares the freshly written
  ``new_path`` (a .npz) with the stored one, as `save_or_check` does."""
  with np.load(new_path, allow_pickle=False) as f:
    arrays = {k: f[k] for k in f.files}
  return save_or_check(stored_path, arrays, True, tolerances)


def finish(ok_list):
  """Exit status of a script: 0 when every check passed."""
  if not all(ok_list):
    print("CHECK FAILED")
    raise SystemExit(1)
  print("OK")
