"""EDT and MDTv2 end to end: the tiny configs train with their masking objectives, and `sample.py` samples
their checkpoints with the Attention Modulation Matrix on and off."""

import json
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

import sample  # noqa: E402
from configs import edt as edt_config, mdt as mdt_config  # noqa: E402
from jdpm.training import trainer  # noqa: E402


def _micro(module, data_dir):
  c = module.get_config("tiny")  # its family's objective, optimizer and sampling recipe
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


@pytest.mark.slow
@pytest.mark.parametrize("family, module, amm_blocks", [("EDT", edt_config, None), ("MDTv2", mdt_config, "1")])
def test_tiny_config_trains_masked_and_samples_with_and_without_amm(tmp_path, family, module, amm_blocks):
  config = _micro(module, tmp_path / "data")
  workdir = tmp_path / "run"
  state = trainer.train(config, workdir)
  assert int(state.step) == 2
  logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  # Both passes of the masking objective ran and were logged; the total is their sum.
  assert {"loss_full", "loss_masked"} <= set(logged[-1])
  assert all(np.isfinite(r["loss_masked"]) and r["loss_masked"] > 0 for r in logged)
  for r in logged:
    assert r["raw_loss"] == pytest.approx(r["loss_full"] + r["loss_masked"], rel=1e-5)

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
