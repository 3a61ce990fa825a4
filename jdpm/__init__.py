"""jdpm: diffusion probabilistic models in JAX/Flax.

Subpackages are imported on first attribute access so that ``import jdpm`` stays cheap:

- ``jdpm.diffusion``  noise schedules, forward process, training losses, DDPM sampling (no Flax)
- ``jdpm.samplers``   UniPC, DPM-Solver(++), DDIM behind one jit-compiled ``sample`` (no Flax)
- ``jdpm.models``     Flax Linen denoisers (DiT, ...) and ``create(name, **kwargs)``
- ``jdpm.convert``    official PyTorch checkpoints -> Flax variables
- ``jdpm.training``   train state, update step, optimizers (Adan), checkpoints
- ``jdpm.data``       TFDS builders and Grain pipelines
- ``jdpm.parallel``   device mesh and sharding rules
- ``jdpm.eval``       evaluation metrics
- ``jdpm.generate``   class-conditional sampling from a Flax denoiser, image grids
- ``jdpm.pipelines``  text-to-image with Stable Diffusion folders (text encoder, UNet, sampler, VAE)
"""

import importlib

__version__ = "0.1.0"

_SUBPACKAGES = ("diffusion", "samplers", "models", "convert", "training", "data", "parallel", "eval", "generate",
                "pipelines")


def __getattr__(name):
  if name in _SUBPACKAGES:
    module = importlib.import_module(f"jdpm.{name}")
    globals()[name] = module
    return module
  raise AttributeError(f"module 'jdpm' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_SUBPACKAGES))
