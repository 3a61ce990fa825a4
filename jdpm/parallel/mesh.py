"""The device mesh, sharding rules for parameters and batches, and multi-host start-up.

One mesh serves every job: axes ``("data", "fsdp")``. The batch is split over both axes (every device sees a
different slice of the batch); parameters are replicated, except large ones, which are split along the
``fsdp`` axis (ZeRO-3 style). With ``fsdp=1`` this is plain data parallelism.

The mesh uses ``AxisType.Auto`` on purpose: jdpm places arrays with ``NamedSharding`` and states the in/out
shardings of each ``jax.jit``; the partitioner propagates the rest. (``jax.make_mesh`` would default to
Explicit axes, which makes every op's sharding part of its type.)
"""

import logging
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXES = ("data", "fsdp")


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
  """A ("data", "fsdp") mesh over all (or the given) devices.

  Args:
    fsdp: size of the fsdp axis; must divide the number of devices. The data axis takes the rest.
    devices: devices to use; default ``jax.devices()`` (all processes' devices).
  """
  devices = list(jax.devices() if devices is None else devices)
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f"fsdp={fsdp} must be >= 1 and divide the device count {len(devices)}.")
  shape = (len(devices) // fsdp, fsdp)
  return jax.make_mesh(shape, DATA_AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device of the mesh."""
  return NamedSharding(mesh, P(DATA_AXES))


def param_sharding(shape, mesh: Mesh, min_fsdp_size: int = 2**18) -> NamedSharding:
  """Replicated for small arrays; otherwise the largest axis divisible by the fsdp size goes on "fsdp".

  Args:
    shape: the array's shape.
    mesh: a mesh from `make_mesh`.
    min_fsdp_size: arrays with fewer elements stay replicated (sharding them saves little memory and costs
      an all-gather each step).
  """
  n = mesh.shape["fsdp"]
  if n == 1 or int(np.prod(shape)) < min_fsdp_size:
    return replicated(mesh)
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % n == 0:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return NamedSharding(mesh, P(*spec))
  return replicated(mesh)


def tree_shardings(abstract_tree, mesh: Mesh, min_fsdp_size: int = 2**18):
  """`param_sharding` for every leaf of a pytree of arrays or ShapeDtypeStructs."""
  return jax.tree.map(lambda a: param_sharding(a.shape, mesh, min_fsdp_size), abstract_tree)


def on_mesh(tree, mesh: Mesh):
  """The arrays of `tree` that do not live on `mesh`'s devices, replicated onto it (the rest unchanged).

  For weights read on one device (e.g. `jdpm.training.run.restore`) that meet a batch sharded over a
  mesh: one jitted program needs all its arguments on the same devices.
  """
  devices = set(mesh.devices.flat)

  def place(leaf):
    if isinstance(leaf, jax.Array) and set(leaf.sharding.device_set) != devices:
      return jax.device_put(leaf, replicated(mesh))
    return leaf

  return jax.tree.map(place, tree)


def global_batch(local_batch, mesh: Mesh):
  """Assemble each host's slice of the batch into global arrays sharded over the mesh.

  Args:
    local_batch: pytree of host-local numpy arrays, leading axis = per-host batch size.
  Returns:
    pytree of global jax.Arrays with leading axis = per-host batch x process count.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local_batch)


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None, *,
                           force=False) -> None:
  """Start multi-host JAX when there is more than one process; a no-op for a single process.

  On TPU VMs call with force=True (train.py's --distributed) and no other argument: JAX discovers the pod
  slice itself (the environment variable JDPM_DISTRIBUTED=1 does the same). Elsewhere (GPU clusters, CPU tests) the coordinator "host:port", the number
  of processes and this process's id come from the arguments or from the environment variables
  JDPM_COORDINATOR, JDPM_NUM_PROCESSES and JDPM_PROCESS_ID.
  """
  coordinator_address, num_processes, process_id, on_tpu_pod = _distributed_settings(
      coordinator_address, num_processes, process_id, force)
  if coordinator_address is None and num_processes is None and not on_tpu_pod:
    return
  if coordinator_address is not None and (num_processes is None or process_id is None):
    raise ValueError("multi-host start-up needs the coordinator address, the number of processes and this "
                     "process's id (flags or JDPM_COORDINATOR / JDPM_NUM_PROCESSES / JDPM_PROCESS_ID).")
  if coordinator_address is not None:
    # Cross-process collectives on the CPU backend need gloo; GPU/TPU backends ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def _distributed_settings(coordinator_address, num_processes, process_id, force):
  """(coordinator, number of processes, process id, TPU pod?) from the arguments, else the environment."""
  coordinator_address = coordinator_address or os.environ.get("JDPM_COORDINATOR")
  num_processes = num_processes or _int_env("JDPM_NUM_PROCESSES")
  process_id = process_id if process_id is not None else _int_env("JDPM_PROCESS_ID")
  on_tpu_pod = force or os.environ.get("JDPM_DISTRIBUTED") == "1"
  return coordinator_address, num_processes, process_id, on_tpu_pod


def distributed_requested(coordinator_address=None, num_processes=None, *, force=False) -> bool:
  """Whether `initialize_distributed` with these arguments (and the environment) starts multi-host JAX."""
  coordinator_address, num_processes, _, on_tpu_pod = _distributed_settings(
      coordinator_address, num_processes, None, force)
  return coordinator_address is not None or num_processes is not None or on_tpu_pod


def cores_available() -> int:
  """CPU cores this process may run on (its affinity mask where the OS has one)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # macOS, Windows
    return os.cpu_count() or 1


def cpu_devices_for(micro_batch: int, cores: int | None = None) -> int:
  """The number of CPU devices for a batch: at most one per core, and a divisor of `micro_batch`.

  Args:
    micro_batch: examples per micro-batch of the whole step (batch_size / grad_accum_steps).
    cores: default `cores_available()`.
  """
  cores = cores_available() if cores is None else cores
  if micro_batch < 1:
    return 1
  return max(n for n in range(1, max(cores, 1) + 1) if micro_batch % n == 0)


def use_cpu_devices(count: int) -> bool:
  """Makes JAX's CPU backend `count` devices; True if it took effect.

  Why: XLA:CPU runs a program's ops one after another, each on one core (only large matmuls use more), so
  a single CPU device leaves the other cores idle for most of a training step. With one device per core the
  data-parallel step splits the batch and every core works: on 2 cores DiT-S/2 trains 17-19% faster and the
  main job's tiny DiT 11-14% (BENCHMARKS.md, "... by CPU device count"). GPU and TPU devices are not affected.

  Must run before JAX's first operation: afterwards, and when XLA_FLAGS or an earlier call already fixed
  the CPU device count, nothing changes and the result is False.
  """
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "") or (
      jax.config.jax_num_cpu_devices not in (-1, count)):
    return False
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # a backend has started: its device count is fixed
    return False
  return True


def _int_env(name):
  value = os.environ.get(name)
  return int(value) if value not in (None, "") else None
