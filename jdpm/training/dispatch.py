"""A bound on how many dispatched training steps may run ahead of the host.

JAX dispatches a jitted step and returns at once, so a training loop whose host work is cheaper than the
step queues steps without limit until something reads a result. On the CPU backend split into several
devices (one per core, as `train.py` does), a queue that deep can hang: the tiny DiT's data-parallel step on
2 CPU devices, dispatched 128 or more times without a wait, stops in its first all-reduce with XLA's
"waiting for all reduce ... may be stuck" message and aborts the process 40 s later (jax 0.10.2; 64 in a row
ran). A few steps in flight already keep every device busy, so waiting for the oldest beyond a small bound
costs nothing.
"""

import collections

import jax

# Steps that may be dispatched and unfinished at once: enough to hide the host's per-step work, far below
# the queue depth at which the CPU backend's collectives were seen to hang (64 ran, 128 did not).
MAX_STEPS_IN_FLIGHT = 16


class InFlightLimit:
  """Waits for the oldest dispatched step whenever more than `limit` are unfinished.

  Usage: ``limit.add(metrics)`` after each dispatch: any pytree of arrays the step produces and that no
  later step donates (the train state is donated to the next step, so its buffers cannot be waited on).
  """

  def __init__(self, limit: int = MAX_STEPS_IN_FLIGHT, wait=jax.block_until_ready):
    if limit < 1:
      raise ValueError(f"limit must be >= 1, got {limit}.")
    self.limit = limit
    self._wait = wait
    self._pending = collections.deque()

  def add(self, marker) -> None:
    """Records one dispatched step; waits for the oldest while more than `limit` are recorded."""
    self._pending.append(marker)
    while len(self._pending) > self.limit:
      self._wait(self._pending.popleft())

  def __len__(self) -> int:
    return len(self._pending)
