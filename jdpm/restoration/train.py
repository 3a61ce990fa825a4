"""Train one DP-IR module from a config:

    python -m jdpm.restoration.train --config=configs/dpir.py:denoiser    --workdir=runs/dpir
    python -m jdpm.restoration.train --config=configs/dpir.py:sr_restorer --workdir=runs/dpir
    python -m jdpm.restoration.train --config=configs/dpir.py:sr_fusion   --workdir=runs/dpir

The denoiser is task-agnostic (``<workdir>/denoiser``); restorer and fusion live in
``<workdir>/<task>/``. The fusion stage needs the other two trained first (it says which command
is missing). Config fields can be overridden with ``--config.<field>=<value>``.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from jdpm import huge_pages

config_flags.DEFINE_config_file("config", None, "e.g. configs/dpir.py:sr_fusion", lock_config=True)
flags.DEFINE_string("workdir", None, "root directory of the DP-IR modules")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from jdpm.restoration import experiment  # pylint: disable=import-outside-toplevel
  from jdpm.restoration.dpir import count_params  # pylint: disable=import-outside-toplevel
  config = FLAGS.config
  try:
    state, frozen, seconds = experiment.train_stage(config, FLAGS.workdir)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"jdpm.restoration.train: {e}")
  print(f"{config.stage} ({config.task if config.stage != 'denoiser' else 'all tasks'}): "
        f"{int(state.step)} steps in {seconds:.0f} s, {count_params(state.params):,} trained parameters"
        + (f", {count_params(frozen):,} frozen" if frozen else ""))


if __name__ == "__main__":
  huge_pages.restart_with_huge_pages()
  app.run(main)
