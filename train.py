"""Train a diffusion model.

  python train.py --config=configs/dit.py:tiny --workdir=runs/tiny
  python train.py --config=configs/dit.py:XL --workdir=gs://bucket/dit_xl --config.batch_size=512

Any config field can be overridden with --config.<field>=<value>. Re-running the same command resumes from
the newest checkpoint in --workdir. Multi-host: on TPU VMs run the same command on every host (add
--distributed); elsewhere pass --coordinator=host:port --num_processes=N --process_id=i.
"""

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/dit.py:tiny.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (TPU pods: no other flag needed).")
flags.DEFINE_string("coordinator", None, "Multi-host coordinator address host:port (non-TPU clusters).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host, non-TPU).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host, non-TPU).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  # Orbax logs every file it writes at INFO; keep the console to jdpm's own messages and warnings.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("jdpm").setLevel(logging.INFO)
  from jdpm import generate, parallel
  from jdpm.training import trainer

  parallel.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id,
                                  force=FLAGS.distributed)
  try:
    trainer.train(FLAGS.config, FLAGS.workdir, sample_fn=generate.training_sample_grid)
  except trainer.ConfigError as e:
    sys.exit(f"train.py: configuration error: {e}")


if __name__ == "__main__":
  app.run(main)
