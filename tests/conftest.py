"""Test set-up: 8 virtual CPU devices, so multi-device code runs on a laptop.

The device count must be fixed before JAX touches a backend, hence here and at import time.
"""

import os
import pathlib
import tempfile

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
# Several tests compile the same programs (a training step per run of the trainer); a persistent
# cache, one per test run, turns the repeats into cache hits.
_CACHE_DIR = tempfile.mkdtemp(prefix="jdpm-test-xla-cache-")
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import pytest  # noqa: E402

DATA_DIR = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir():
  return DATA_DIR
