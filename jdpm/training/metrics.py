"""Metrics logging: a JSON-lines file and TensorBoard event files (written without TensorFlow).

Only process 0 writes. `MetricsWriter.write` takes host floats; the training loop fetches each step's
metrics one step late, so the host never waits for the device to finish the step it just dispatched.
"""

import json
import pathlib
import time

import jax


class MetricsWriter:
  """Appends ``{"step": s, "time": unix seconds, name: value, ...}`` lines to `workdir/metrics.jsonl` and
  scalars to TensorBoard event files in `workdir/tensorboard/`."""

  def __init__(self, workdir, *, tensorboard: bool = True):
    self._active = jax.process_index() == 0
    self._jsonl = None
    self._events = None
    if not self._active:
      return
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
    if tensorboard:
      # Imported here: the event writer pulls in protobuf, which a metrics-free import of jdpm does not need.
      from tensorboard.summary.writer.event_file_writer import EventFileWriter
      self._events = EventFileWriter(str(workdir / "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if not self._active:
      return
    values = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")
    self._jsonl.flush()
    if self._events is not None:
      from tensorboard.compat.proto import event_pb2, summary_pb2
      summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=v)
                                           for k, v in values.items()])
      self._events.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def flush(self) -> None:
    if self._events is not None:
      self._events.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._events is not None:
      self._events.close()
      self._events = None
