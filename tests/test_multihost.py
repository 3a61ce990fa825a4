"""Two processes on 127.0.0.1 (gloo collectives) train 3 steps and agree on every loss."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

from test_train_step import _train

import jax
from jdpm import parallel


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_report_identical_losses():
  worker = pathlib.Path(__file__).with_name("multihost_worker.py")
  port = _free_port()
  procs = []
  for pid in range(2):
    env = dict(os.environ, JDPM_COORDINATOR=f"127.0.0.1:{port}", JDPM_NUM_PROCESSES="2",
               JDPM_PROCESS_ID=str(pid), JAX_PLATFORMS="cpu")
    procs.append(subprocess.Popen([sys.executable, str(worker)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  results = []
  for p in procs:
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, err[-3000:]
    results.append(json.loads(out.strip().splitlines()[-1]))
  assert results[0]["losses"] == results[1]["losses"]
  # The same 3 steps on one device give the same losses: the two hosts really trained on the global batch.
  _, single = _train(parallel.make_mesh(devices=jax.devices()[:1]), steps=3)
  np.testing.assert_allclose(results[0]["losses"], single, rtol=1e-5)
