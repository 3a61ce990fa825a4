"""Train a diffusion model.

  python train.py --config=configs/dit.py:tiny --workdir=runs/tiny
  python train.py --config=configs/dit.py:XL --workdir=gs://bucket/dit_xl --config.batch_size=512

Any config field can be overridden with --config.<field>=<value>. Re-running the same command resumes from
the newest checkpoint in --workdir. Ctrl-C or SIGTERM finishes the current step, saves it and exits; a
second Ctrl-C aborts at once. Multi-host: on TPU VMs run the same command on every host (add
--distributed); elsewhere pass --coordinator=host:port --num_processes=N --process_id=i.

A mistake in the command (a missing config file, a misspelt field, a bad value) is reported in one line
that names it; --verbose shows the full traceback instead.
"""

import logging
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jdpm import huge_pages

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/dit.py:tiny.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (TPU pods: no other flag needed).")
flags.DEFINE_string("coordinator", None, "Multi-host coordinator address host:port (non-TPU clusters).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host, non-TPU).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host, non-TPU).")
flags.DEFINE_bool("allow_batch_size_change", False,
                  "Resume a run with another batch_size (the data order and the learning rate's meaning change).")
flags.DEFINE_integer("cpu_devices", None,
                     "CPU only: split the CPU into this many JAX devices (default: one per core, as many as divide "
                     "the batch; 1: a single device). Ignored on GPU/TPU and when XLA_FLAGS sets a device count.")
flags.DEFINE_bool("verbose", False, "Full tracebacks for configuration errors, and library INFO logs.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _fail(message):
  sys.exit(f"train.py: {message}")


_CONFIG_ERRORS = (AttributeError, KeyError, OSError, ImportError, SyntaxError, ValueError, TypeError)


def _config_error_line(error):
  """One line for an error raised while reading --config or a --config.<field> override."""
  if isinstance(error, (AttributeError, KeyError)):  # a misspelt field; ml_collections suggests the right one
    text = str(error).strip("'\"").replace("\\'", "'").replace("\\n", " ").replace("\n", " ")
    return f"unknown config field: {text}"
  text = " ".join(str(error).split())
  missing = re.search(r"No such file or directory: '([^']+)'", text)
  if missing:
    return f"config file {missing.group(1)} not found (expected e.g. --config=configs/dit.py:tiny)."
  return f"cannot load --config: {text}"


def parse_flags(argv):
  """absl's flag parsing, with errors in the config file or its overrides as one line (--verbose: as is)."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    if "--verbose" in argv:
      raise
    sys.exit(f"train.py: {' '.join(str(e).split())}")
  except _CONFIG_ERRORS as e:
    if "--verbose" in argv:
      raise
    sys.exit(f"train.py: {_config_error_line(e)}")


def load_config():
  """FLAGS.config, whose file is only read here; its errors become one line."""
  try:
    config = FLAGS.config
    config.to_json_best_effort()  # the file is loaded lazily: make any error in it surface here
    return config
  except _CONFIG_ERRORS as e:
    _fail(_config_error_line(e))
  return None


def main(argv):
  del argv
  # Orbax and TFDS log every file they touch; keep the console to jdpm's own messages and real errors.
  absl_logging.set_verbosity(absl_logging.INFO if FLAGS.verbose else absl_logging.ERROR)
  logging.getLogger("jdpm").setLevel(logging.INFO)
  config = FLAGS.config if FLAGS.verbose else load_config()
  from jdpm import generate, parallel
  from jdpm.training import trainer

  if not parallel.distributed_requested(FLAGS.coordinator, FLAGS.num_processes, force=FLAGS.distributed):
    # One JAX device per core (multi-host runs keep the count their launcher gives).
    micro_batch = config.batch_size // max(config.grad_accum_steps, 1)
    parallel.use_cpu_devices(FLAGS.cpu_devices or parallel.cpu_devices_for(micro_batch))
  parallel.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id,
                                  force=FLAGS.distributed)
  try:
    trainer.train(config, FLAGS.workdir, sample_fn=generate.training_sample_grid,
                  allow_batch_size_change=FLAGS.allow_batch_size_change)
  except (trainer.ConfigError, trainer.checkpoint_lib.CheckpointError) as e:
    if FLAGS.verbose:
      raise
    _fail(f"{e}")


if __name__ == "__main__":
  huge_pages.restart_with_huge_pages()
  app.run(main, flags_parser=parse_flags)
