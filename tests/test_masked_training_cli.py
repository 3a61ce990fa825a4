"""EDT and MDTv2 end to end: the tiny configs train with their masking objectives (the logged losses of
the first step recomputed directly from the model), and `sample.py` samples their checkpoints with the
Attention Modulation Matrix on and off."""

import json
import pathlib

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

import sample  # noqa: E402
from configs import edt as edt_config, mdt as mdt_config  # noqa: E402
from jdpm import data as data_lib  # noqa: E402
from jdpm.training import trainer  # noqa: E402


def _micro(module, data_dir):
  c = module.get_config("tiny")  # its family's objective, optimizer and sampling recipe
  if module is edt_config:  # half the recipe's width: the same program, a third less test time
    c.model.update(dict(hidden_size=48, dims=edt_config.stage_widths(48), num_heads=(3, 4, 5, 4, 3)))
  c.data.update(dict(name="shapes/tiny", data_dir=str(data_dir)))
  c.batch_size = 8
  c.total_steps = 2
  c.log_every = 1
  c.checkpoint_every = 2
  c.sample_every = 0
  # Two large Adam steps move the adaLN-Zero gates (zero at init) far enough that the attention, and so AMM,
  # visibly reaches the output.
  c.optimizer.update(dict(lr=0.05, schedule="constant", warmup_steps=0))
  return c


def _first_step_passes(config, family):
  """Batch means of the full and the masked pass's losses at step 1, computed directly: the trainer's
  initial state, the data's first batch and the step's draws (``fold_in(rng, 0)``), then two model calls
  through the diffusion losses."""
  info = data_lib.dataset_info(config.data.name, data_dir=config.data.data_dir)
  run = trainer.Trainer.from_config(config, info)
  state, _ = run.init_state()
  batch = next(data_lib.make_train_iterator(
      config.data.name, "train", config.batch_size, seed=config.seed, data_dir=config.data.data_dir,
      random_flip=config.data.random_flip, worker_count=config.data.worker_count))
  batch = {k: v for k, v in batch.items() if k != "index"}
  objective = run.objective
  drawn = objective.draw(jax.random.fold_in(state.rng, state.step), batch, state.extra)
  masked = drawn["masked"]
  masks = (dict(down_keep=masked["down_keep"], mid_keep=masked.get("mid_keep")) if family == "EDT"
           else dict(mask=masked["token_mask"]))

  def pass_loss(noise, drop, **kwargs):
    fn = lambda x_t, t: run.model.apply({"params": state.params}, x_t, t, drawn["label"],
                                        force_drop_ids=drop, **kwargs)
    return objective.diffusion.training_losses(fn, drawn["image"], drawn["t"], noise,
                                               min_snr_gamma=objective.min_snr_gamma or None,
                                               min_snr_offset=objective.min_snr_offset)["loss"]

  full = pass_loss(drawn["noise"], drawn["drop"])
  masked_loss = pass_loss(masked["noise"], masked["drop"], **masks)
  return float(np.mean(full)), float(np.mean(masked_loss))


@pytest.mark.slow
@pytest.mark.parametrize("family, module, amm_blocks", [("EDT", edt_config, None), ("MDTv2", mdt_config, "1")])
def test_tiny_config_trains_masked_and_samples_with_and_without_amm(tmp_path, family, module, amm_blocks):
  config = _micro(module, tmp_path / "data")
  workdir = tmp_path / "run"
  state = trainer.train(config, workdir)
  assert int(state.step) == 2
  logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  # Both passes of the masking objective ran and were logged.
  assert {"loss_full", "loss_masked"} <= set(logged[-1])
  assert all(np.isfinite(r["loss_masked"]) and r["loss_masked"] > 0 for r in logged)
  # The first step's logged losses equal the two passes computed directly from the initial
  # parameters, the first batch and the step's draws (not through the objective's loss).
  full, masked = _first_step_passes(config, family)
  assert logged[0]["loss_full"] == pytest.approx(full, rel=1e-5)
  assert logged[0]["loss_masked"] == pytest.approx(masked, rel=1e-5)
  assert logged[0]["raw_loss"] == pytest.approx(full + masked, rel=1e-5)
  assert abs(masked - full) > 1e-4 * full

  outputs = {}
  for amm in (False, True):
    out = tmp_path / f"amm{int(amm)}.png"
    argv = [f"--workdir={workdir}", "--num-samples=8", "--steps=3", "--seed=3", f"--out={out}"]
    argv += (["--amm"] + ([f"--amm-blocks={amm_blocks}"] if amm_blocks else [])) if amm else ["--no-amm"]
    sample.main(argv)
    assert out.exists()
    outputs[amm] = np.load(out.with_suffix(".npz"))
  images = {amm: data["samples"] for amm, data in outputs.items()}
  assert images[False].shape == images[True].shape
  assert np.all(np.isfinite(images[True]))
  assert not np.array_equal(images[False], images[True])  # AMM changes the attention, so the samples
