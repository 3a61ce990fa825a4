"""Training: train state, the jitted update step, objectives, optimizers, checkpoints, the training loop.

`run.restore(workdir)` reads a trained run back for inference; `freeze` splits frozen parameters off.
"""

from jdpm.training import freeze, objectives, run
from jdpm.training.checkpoint import CheckpointError, Checkpointer, CheckpointMismatchError
from jdpm.training.objectives import DenoisingObjective
from jdpm.training.optimizers import AdanState, adan, make_optimizer
from jdpm.training.preemption import PreemptionGuard
from jdpm.training.schedules import constant, linear_decay, make_schedule, warmup
from jdpm.training.state import TrainState, create_train_state
from jdpm.training.step import jit_update_fn, make_update_fn
