"""Stop training cleanly on SIGTERM (preemption) or, optionally, Ctrl-C.

Cloud schedulers announce preemption with SIGTERM and kill the job a little later. The handler
installed here only records the signal; the training loop polls it between steps, then saves a
checkpoint, waits for it, and exits with status 0::

  with PreemptionGuard() as guard:
    for step in range(start, num_steps + 1):
      state = train_step(state, next(batches))
      checkpointer.save(step, state, batches)
      if step % 10 == 0 and guard.should_stop_all():   # every host takes the same branch
        checkpointer.save(step, state, batches, force=True)
        checkpointer.wait()
        break

Multi-host: hosts receive the signal at different times, so each host's flag may differ at a
given step. `should_stop_all` combines the flags of all processes with a small all-gather, so it is
a collective: every process must call it at the same steps. It also waits for the device work
queued before it, so call it every few steps rather than every step.

JAX's own preemption service (on by default after ``jax.distributed.initialize``) listens to
SIGTERM in C++ and lets Orbax save at ``multihost_utils.reached_preemption_sync_point``. Installing
a Python SIGTERM handler displaces that C++ listener, and Python cannot reinstall it afterwards, so
once a guard was entered the sync point never fires in that process; the guard's
`should_stop_all` does the same job. The guard does not call ``reached_preemption_sync_point``
itself for that reason.
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils
import numpy as np


class PreemptionGuard:
  """Context manager that turns SIGTERM (and optionally SIGINT) into a `should_stop` flag.

  While active, a SIGTERM no longer kills the process; it sets the flag. With
  ``handle_sigint=True`` the first Ctrl-C also only sets the flag, and a second one raises
  KeyboardInterrupt as usual, so an impatient user can still interrupt. On exit the previous
  Python handlers are put back (a handler installed from C, like JAX's, becomes the default one). Must be entered on the main thread (Python only delivers signals there).
  """

  def __init__(self, *, handle_sigint=False):
    self._signals = (signal.SIGTERM, signal.SIGINT) if handle_sigint else (signal.SIGTERM,)
    self._previous = {}
    self._received = None  # the first signal number received, or None
    self._sigint_count = 0

  @property
  def should_stop(self):
    """True once a handled signal arrived on this process."""
    return self._received is not None

  @property
  def received_signal(self):
    """The first signal received (a `signal.Signals`), or None."""
    return None if self._received is None else signal.Signals(self._received)

  def request_stop(self):
    """Sets the flag by hand (e.g. from a time budget); same effect as a signal."""
    if self._received is None:
      self._received = signal.SIGTERM

  def should_stop_all(self):
    """True if any process's flag is set; the same answer on all processes.

    On one process this is `should_stop`. With several it is a collective (an all-gather of one
    int per process): call it from every process at the same training steps.
    """
    if jax.process_count() == 1:
      return self.should_stop
    flags = multihost_utils.process_allgather(np.asarray(self.should_stop, np.int32))
    return bool(np.any(flags))

  def _handle(self, signum, frame):
    del frame
    # Only a flag: the handler may run between any two bytecodes of the training loop, where
    # saving or logging could deadlock or see a half-updated state.
    if signum == signal.SIGINT:
      self._sigint_count += 1
      if self._sigint_count > 1:
        raise KeyboardInterrupt
    if self._received is None:
      self._received = signum

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      raise RuntimeError("PreemptionGuard must be entered on the main thread: Python delivers "
                         "signals only there.")
    for signum in self._signals:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info):
    for signum, previous in self._previous.items():
      # None means the old handler was installed outside Python; the default is the closest match.
      signal.signal(signum, signal.SIG_DFL if previous is None else previous)
    self._previous.clear()
    return False
