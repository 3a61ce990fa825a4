"""The trainer's bound on dispatched, unfinished steps (`jdpm.training.dispatch`)."""

import jax
import jax.numpy as jnp
import pytest

from jdpm.training import dispatch


def test_waits_for_the_oldest_step_beyond_the_limit():
  waited = []
  limit = dispatch.InFlightLimit(3, wait=waited.append)
  for step in range(7):
    limit.add(step)
    assert len(limit) == min(step + 1, 3)
  assert waited == [0, 1, 2, 3]  # in dispatch order, each once


def test_waits_on_real_arrays_and_rejects_a_bound_below_one():
  limit = dispatch.InFlightLimit(2)
  f = jax.jit(lambda x: x + 1)
  x = jnp.zeros(4)
  for _ in range(5):
    x = f(x)
    limit.add({"loss": x})
  assert len(limit) == 2 and float(x[0]) == 5.0
  with pytest.raises(ValueError, match="limit must be >= 1"):
    dispatch.InFlightLimit(0)


def test_the_bound_stays_far_below_the_queue_depth_that_hung():
  assert 1 < dispatch.MAX_STEPS_IN_FLIGHT <= 32
