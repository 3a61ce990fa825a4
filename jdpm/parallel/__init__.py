"""Device mesh, sharding rules and multi-host helpers."""

from jdpm.parallel.mesh import (DATA_AXES, batch_sharding, cores_available, cpu_devices_for, distributed_requested,
                                global_batch, initialize_distributed, make_mesh, on_mesh, param_sharding, replicated,
                                tree_shardings, use_cpu_devices)
from jdpm.parallel.microbatch import (CPU_MICRO_BATCH_BYTES, CPU_TRAIN_MICRO_BATCH_BYTES, cpu_grad_accum_steps,
                                      cpu_micro_batch, micro_batched, widest_activation_bytes)
