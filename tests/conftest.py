"""Test set-up: 8 virtual CPU devices, so multi-device code runs on a laptop.

The device count must be fixed before JAX touches a backend, hence here and at import time.
"""

import os
import pathlib

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402

DATA_DIR = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir():
  return DATA_DIR
