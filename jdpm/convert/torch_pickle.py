"""Reads PyTorch ``torch.save`` checkpoints (zip format, torch >= 1.6) without torch.

A ``.pt`` file is a zip archive holding ``<root>/data.pkl`` (a pickle of the saved object whose
tensors refer to storages by key) and one raw little-endian file ``<root>/data/<key>`` per
storage. The unpickler here is restricted: it rebuilds tensors as numpy arrays and ordered
dicts, and turns any other class into an inert placeholder, so no code from the file runs.
"""

import collections
import functools
import pickle
import sys
import zipfile

import ml_dtypes
import numpy as np

# Legacy typed-storage class names (what ``torch.save`` writes) → numpy dtype.
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
}


class StorageType:
  """Stands for ``torch.<X>Storage`` in the pickle: only its dtype matters."""

  def __init__(self, name):
    self.name = name
    self.dtype = np.dtype(STORAGE_DTYPES[name])


class Opaque:
  """Placeholder for any non-tensor object in a checkpoint (e.g. ``argparse.Namespace``).

  Each unknown class in the file becomes a subclass of ``Opaque`` with ``qualname`` set; its
  instances keep the constructor args and pickled state for inspection and run nothing.
  """
  qualname = "?"

  def __new__(cls, *args, **kwargs):
    del kwargs  # Unused.
    obj = super().__new__(cls)
    obj.args, obj.state = args, None
    return obj

  def __init__(self, *args, **kwargs):
    pass

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f"Opaque({self.qualname})"


@functools.cache
def _opaque_type(qualname):
  return type(qualname.rsplit(".", 1)[-1], (Opaque,), {"qualname": qualname})


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """``torch._utils._rebuild_tensor_v2``: a strided view of a storage, copied to a contiguous
  numpy array."""
  size = tuple(size)
  if not size:
    return np.array(storage[storage_offset])
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                         strides=tuple(s * itemsize for s in stride),
                                         writeable=False)
  return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
  """``torch._utils._rebuild_parameter``: an ``nn.Parameter`` is just its data here."""
  return data


_ALLOWED_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, load_storage):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module, name):
    if (module, name) in _ALLOWED_FUNCTIONS:
      return _ALLOWED_FUNCTIONS[(module, name)]
    if module == "torch" and name in STORAGE_DTYPES:
      return StorageType(name)
    return _opaque_type(f"{module}.{name}")

  def persistent_load(self, pid):
    # ("storage", storage_type, key, location, numel)
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise ValueError(f"Unsupported persistent id in torch checkpoint: {pid!r}.")
    storage_type, key = pid[1], pid[2]
    if not isinstance(storage_type, StorageType):
      raise ValueError(f"Unsupported storage type {storage_type!r} in torch checkpoint.")
    return self._load_storage(str(key), storage_type.dtype)


def load_torch_checkpoint(path):
  """Loads a ``torch.save`` zip checkpoint as plain Python objects with numpy arrays.

  Args:
    path: file path of a ``.pt``/``.pth`` written by ``torch.save`` (torch >= 1.6).

  Returns:
    The saved object: dicts/OrderedDicts, lists and scalars as saved, tensors as numpy arrays
    (bfloat16 via ``ml_dtypes``), other objects as ``Opaque`` placeholders.
  """
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path} is not a zip-format torch checkpoint (torch.save of torch >= 1.6). "
                     "Re-save it with a recent torch, or export it to .safetensors or .npz.")
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("data.pkl")]
    if len(pickles) != 1:
      raise ValueError(f"{path}: expected one data.pkl in the archive, found {pickles}.")
    root = pickles[0][: -len("data.pkl")]
    byteorder = "little"
    if f"{root}byteorder" in names:
      byteorder = archive.read(f"{root}byteorder").decode().strip()
    storages = {}

    def load_storage(key, dtype):
      if key not in storages:
        array = np.frombuffer(archive.read(f"{root}data/{key}"), dtype=dtype)
        storages[key] = array.byteswap() if byteorder != sys.byteorder else array
      return storages[key]

    with archive.open(pickles[0]) as f:
      return _Unpickler(f, load_storage).load()
