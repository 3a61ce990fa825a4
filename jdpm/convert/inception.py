"""pytorch-fid's FID Inception weights → ``jdpm.models.inception.InceptionV3`` variables.

The weights are the file ``pt_inception-2015-12-05-6726825d.pth`` released with pytorch-fid
(TensorFlow's 2015-12-05 Inception graph converted to PyTorch). jdpm never downloads it: get it
once from ``WEIGHTS_URL`` and pass its path, or set the environment variable
``JDPM_INCEPTION_WEIGHTS`` to it (a file, or a directory holding the file under its released
name).

``load_variables(path=None)`` checks the file's SHA-256, reads it without torch and returns
``{"params", "batch_stats"}``. The expected digest, ``WEIGHTS_SHA256``, is the one pinned for
this release asset by independent projects that verify it (95,628,359 bytes); its first 8 hex
digits are the ``6726825d`` in the file name, which is what ``torch.hub`` checks.

The file was published in 2019, before torch 1.6 made zip archives the default, so it is
expected in the legacy ``torch.save`` format; ``jdpm.convert.load_torch_checkpoint`` reads both
formats with a restricted unpickler (no code from the file runs).
"""

import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np

from jdpm.convert.mapping import map_state_dict
from jdpm.convert.state_dict import load_state_dict
from jdpm.models import inception as inception_lib

WEIGHTS_FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               + WEIGHTS_FILE_NAME)
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
ENV_VAR = "JDPM_INCEPTION_WEIGHTS"

_BN_STATS = {"running_mean": "mean", "running_var": "var"}


def _where_to_get_it():
  return (f"Download it once (jdpm never downloads) from {WEIGHTS_URL} and pass its path "
          f"(path=...), or set the environment variable {ENV_VAR} to the file (or to the "
          f"directory holding {WEIGHTS_FILE_NAME}).")


def resolve_path(path=None):
  """The weights file: ``path``, else ``$JDPM_INCEPTION_WEIGHTS``; a directory means the file
  ``pt_inception-2015-12-05-6726825d.pth`` inside it.

  Raises:
    FileNotFoundError saying where to get the file and where to put it.
  """
  source = "path" if path is not None else ENV_VAR
  path = path if path is not None else os.environ.get(ENV_VAR)
  if not path:
    raise FileNotFoundError(f"No FID Inception weights given: neither path= nor ${ENV_VAR} is "
                            f"set. " + _where_to_get_it())
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, WEIGHTS_FILE_NAME)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"FID Inception weights not found at {path!r} (from {source}). "
                            + _where_to_get_it())
  return path


def sha256_of(path):
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def check_sha256(path, expected=WEIGHTS_SHA256):
  """Raises ValueError unless the file's SHA-256 is ``expected``."""
  actual = sha256_of(path)
  if actual != expected:
    raise ValueError(f"FID Inception weights {path!r} have SHA-256 {actual}, expected "
                     f"{expected} (pytorch-fid's {WEIGHTS_FILE_NAME}, 95,628,359 bytes). The "
                     "file is damaged, incomplete or a different network; FID/IS/sFID values "
                     "computed with it would not be comparable. " + _where_to_get_it())


def read_weights_file(path):
  """{torch key: numpy array} from a zip-format or legacy ``torch.save`` file (or .npz)."""
  return load_state_dict(path)


def convert_state_dict(state_dict, model=None):
  """pytorch-fid's InceptionV3 state dict → ``{"params", "batch_stats"}`` of ``model``.

  Args:
    state_dict: {torch key: array} of ``pytorch_fid.inception.fid_inception_v3()`` (the keys of
      torchvision's Inception3 without ``AuxLogits``: ``Conv2d_1a_3x3.conv.weight``, ...,
      ``Mixed_7c.branch_pool.bn.running_var``, ``fc.weight``, ``fc.bias``).
      ``num_batches_tracked`` buffers are ignored.
    model: the ``InceptionV3`` the variables are for (default ``InceptionV3()``); only its
      shapes matter.

  Returns:
    {"params": ..., "batch_stats": ...} of float32 jax arrays.

  Raises:
    ValueError listing every unexpected key, missing variable and shape mismatch.
  """
  model = model or inception_lib.InceptionV3()
  images = jax.ShapeDtypeStruct((1, inception_lib.INPUT_SIZE, inception_lib.INPUT_SIZE, 3),
                                jnp.float32)
  target = jax.eval_shape(model.init, jax.random.key(0), images)
  params, stats = {}, {}
  for key, value in load_state_dict(state_dict).items():
    prefix, _, leaf = key.rpartition(".")
    if leaf == "num_batches_tracked":
      continue
    if leaf in _BN_STATS:
      stats[f"{prefix}.{_BN_STATS[leaf]}"] = value
    else:
      params[key] = value
  name = "the FID InceptionV3"
  variables = {"params": map_state_dict(params, target["params"], model_name=name),
               "batch_stats": map_state_dict(stats, target["batch_stats"], model_name=name)}
  return jax.tree.map(jnp.asarray, variables)


def load_variables(path=None, *, sha256=WEIGHTS_SHA256, model=None):
  """Loads pytorch-fid's FID Inception weights for ``jdpm.models.inception.InceptionV3``.

  Args:
    path: the ``.pth`` file (or a directory holding it); default ``$JDPM_INCEPTION_WEIGHTS``.
    sha256: expected SHA-256 of the file; None skips the check (e.g. for a re-saved copy).
    model: the ``InceptionV3`` the variables are for (default ``InceptionV3()``).

  Returns:
    {"params": ..., "batch_stats": ...}, for ``model.apply(variables, images)``.

  Raises:
    FileNotFoundError when no file is given or found, ValueError when its hash is wrong; both
    say where to get the file and where to put it.
  """
  path = resolve_path(path)
  if sha256 is not None:
    check_sha256(path, sha256)
  return convert_state_dict(read_weights_file(path), model)

