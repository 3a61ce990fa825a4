"""One process of the two-process training test (run by tests/test_multihost.py, not by pytest itself).

Each process owns 2 CPU devices and feeds its half of every global batch through
`jax.make_array_from_process_local_data`; it prints the losses of 3 steps as JSON on its last line.
"""

import json
import sys

import jax

jax.config.update("jax_num_cpu_devices", 2)

import numpy as np  # noqa: E402
import optax  # noqa: E402

from jdpm import parallel  # noqa: E402
from jdpm.training.state import create_train_state  # noqa: E402
from jdpm.training.step import jit_update_fn, make_update_fn  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_train_step import NoisyRegression, _batches, _params  # noqa: E402


def main():
  parallel.initialize_distributed()
  assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.device_count())
  mesh = parallel.make_mesh()
  optimizer = optax.adamw(1e-2, weight_decay=0.01)
  update = make_update_fn(NoisyRegression(), optimizer, ema_decay=0.9)
  state = create_train_state(_params(jax.random.key(0)), optimizer, jax.random.key(1), extra=np.float32(0))
  shardings = jax.tree.map(lambda a: parallel.param_sharding(a.shape, mesh), state)
  state = jax.jit(lambda s: s, out_shardings=shardings)(state)
  step = jit_update_fn(update, shardings, parallel.batch_sharding(mesh), parallel.replicated(mesh))
  losses = []
  half = jax.process_index()
  for batch in _batches(3):
    local = {k: v[8 * half: 8 * (half + 1)] for k, v in batch.items()}
    state, metrics = step(state, parallel.global_batch(local, mesh))
    losses.append(float(metrics["loss"]))
  print(json.dumps({"process": jax.process_index(), "losses": losses}))
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
