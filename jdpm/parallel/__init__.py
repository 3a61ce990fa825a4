"""Device mesh, sharding rules and multi-host helpers."""

from jdpm.parallel.mesh import (DATA_AXES, batch_sharding, cores_available, cpu_devices_for, distributed_requested,
                                global_batch, initialize_distributed, make_mesh, on_mesh, param_sharding, replicated,
                                tree_shardings, use_cpu_devices)
