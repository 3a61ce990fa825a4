"""Reads PyTorch ``torch.save`` checkpoints (zip format of torch >= 1.6, and the legacy format) without torch.

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
  """Loads a ``torch.save`` checkpoint as plain Python objects with numpy arrays (torch is not used).

  Args:
    path: file path of a ``.pt``/``.pth``/``.bin`` written by ``torch.save``: the zip format
      (torch >= 1.6) or the legacy format (e.g. pytorch-fid's Inception weights).

  Returns:
    The saved object: dicts/OrderedDicts, lists and scalars as saved, tensors as numpy arrays
    (bfloat16 via ``ml_dtypes``), other objects as ``Opaque`` placeholders.
  """
  if zipfile.is_zipfile(path):
    return _load_zip_checkpoint(path)
  if _is_legacy_pickle(path):
    return read_legacy_torch_file(path)
  raise ValueError(f"{path} is not a torch.save checkpoint (neither the zip nor the legacy format). "
                   "Export it to .safetensors or .npz, or re-save it with torch.save.")


def _load_zip_checkpoint(path):
  """``load_torch_checkpoint`` for the zip format (torch >= 1.6)."""
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


# Legacy torch.save header: a pickled magic number and protocol version (torch/serialization.py).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _ScanUnpickler(_Unpickler):
  """First pass over a legacy pickle: records each storage's dtype and builds no tensors."""

  def __init__(self, file):
    super().__init__(file, load_storage=None)
    self.dtypes = {}

  def find_class(self, module, name):
    if module == "torch._utils" and name.startswith("_rebuild"):
      return lambda *args: None  # No data yet: tensors become None in this pass.
    return super().find_class(module, name)

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
      raise ValueError(f"Unsupported persistent id in legacy torch file: {pid!r}.")
    storage_type, key, view_metadata = pid[1], str(pid[2]), pid[5] if len(pid) > 5 else None
    if view_metadata is not None:
      raise ValueError("Legacy torch files with storage views (torch < 0.4) are not supported.")
    self.dtypes[key] = storage_type.dtype


def read_legacy_torch_file(path):
  """Reads a legacy (pre-1.6, non-zip) ``torch.save`` file without torch.

  The layout is five pickles in a row: magic number, protocol version, system info, the saved
  object (tensors refer to storages by key), the sorted list of storage keys; then, per key, an
  int64 little-endian element count and the raw little-endian data. Tensors need their storage
  when unpickled, which comes after the object, so the object is unpickled twice: once to learn
  each storage's dtype (hence its byte size), once with the data.

  Returns:
    The saved object with tensors as numpy arrays (as ``load_torch_checkpoint``).
  """
  with open(path, "rb") as f:
    try:
      header = [_Unpickler(f, None).load() for _ in range(3)]
    except (pickle.UnpicklingError, EOFError, ValueError):
      header = None
    if not header or header[0] != _LEGACY_MAGIC or header[1] != _LEGACY_PROTOCOL:
      raise ValueError(f"{path} is neither a zip-format nor a legacy torch.save file.")
    start = f.tell()
    scan = _ScanUnpickler(f)
    scan.load()
    keys = _Unpickler(f, None).load()
    storages = {}
    for key in keys:
      dtype = scan.dtypes[str(key)]
      count = int.from_bytes(f.read(8), "little", signed=True)
      data = f.read(count * dtype.itemsize)
      if len(data) != count * dtype.itemsize:
        raise ValueError(f"{path} is truncated (storage {key}).")
      array = np.frombuffer(data, dtype=dtype)
      storages[str(key)] = array.byteswap() if sys.byteorder != "little" else array
    f.seek(start)
    return _Unpickler(f, lambda key, dtype: storages[key]).load()


def _is_legacy_pickle(path):
  with open(path, "rb") as f:
    head = f.read(2)
  # Pickle protocol 2+ streams start with PROTO (0x80); the legacy format's first pickle is one.
  return len(head) == 2 and head[0] == pickle.PROTO[0] and head[1] >= 2
