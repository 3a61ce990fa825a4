"""On-the-fly evaluation: resumable accumulation, sample.py printing the five metrics on a tiny run, and the
quick evaluation that follows a sample grid."""

import json
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

import sample  # noqa: E402
from jdpm import eval as eval_lib  # noqa: E402
from jdpm.eval import sample_eval  # noqa: E402
from test_trainer import micro_config  # noqa: E402


class _LinearFeatures:
  """A fixed random projection standing in for a feature network (fast, deterministic)."""
  name = "linear"

  def __init__(self):
    rng = np.random.default_rng(0)
    self.w_pool = rng.standard_normal((32 * 32 * 3, 12)).astype(np.float32) / 100
    self.w_spatial = rng.standard_normal((32 * 32 * 3, 6)).astype(np.float32) / 100
    self.w_logits = rng.standard_normal((32 * 32 * 3, 5)).astype(np.float32) / 100

  def __call__(self, images):
    x = images.reshape(len(images), -1).astype(np.float32) / 255
    return {"pool": x @ self.w_pool, "spatial": x @ self.w_spatial, "logits": x @ self.w_logits}


def _draw(index, batch_size=8):
  rng = np.random.default_rng(index)  # a function of the batch index alone, as required
  return rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8), rng.integers(0, 5, batch_size)


def _reference(extractor):
  images = np.concatenate([_draw(1000 + i)[0] for i in range(6)])
  features = extractor(images)
  return eval_lib.make_reference(features["pool"], features["spatial"])


def test_interrupted_evaluation_resumes_to_the_same_numbers(tmp_path):
  extractor = _LinearFeatures()
  reference = _reference(extractor)
  kwargs = dict(num_samples=45, batch_size=8, save_every=2, fingerprint="run", progress=False)
  straight = sample_eval.evaluate_generator(_draw, extractor, reference, **kwargs)
  assert straight["num_samples"] == 45
  assert set(straight) >= set(eval_lib.METRICS)

  state = tmp_path / "state.npz"
  calls = []

  def interrupted(index):
    if index == 5:
      raise KeyboardInterrupt
    calls.append(index)
    return _draw(index)

  with pytest.raises(KeyboardInterrupt):
    sample_eval.evaluate_generator(interrupted, extractor, reference, state_path=state, **kwargs)
  assert state.exists() and calls == [0, 1, 2, 3, 4]  # batches 0-3 saved, batch 4 is drawn again
  resumed_calls = []

  def resumed_draw(index):
    resumed_calls.append(index)
    return _draw(index)

  resumed = sample_eval.evaluate_generator(resumed_draw, extractor, reference, state_path=state, **kwargs)
  assert resumed_calls == [4, 5]
  for name in eval_lib.METRICS:
    assert resumed[name] == pytest.approx(straight[name], rel=1e-12, abs=1e-12), name

  with pytest.raises(ValueError, match="different settings"):
    sample_eval.evaluate_generator(_draw, extractor, reference, state_path=state,
                                   **{**kwargs, "fingerprint": "another run"})


@pytest.mark.slow
def test_sample_py_prints_all_metrics_for_a_tiny_run(tmp_path, capsys):
  from jdpm.eval import proxy
  from jdpm.training import trainer

  data_dir = tmp_path / "data"
  config = micro_config(data_dir, total_steps=2)
  trainer.train(config, tmp_path / "run")
  # A quickly trained proxy classifier (the real one trains for longer; this test checks the plumbing).
  proxy.save_proxy_classifier(proxy.train_proxy_classifier("shapes/tiny", data_dir, steps=20), data_dir)

  ref = tmp_path / "ref.npz"
  argv = [f"--workdir={tmp_path / 'run'}", "--num-samples=20", "--batch-size=8", "--steps=3",
          f"--eval-stats={ref}", f"--out={tmp_path / 'eval' / 'samples.png'}"]
  results = sample.main(argv)
  printed = capsys.readouterr().out
  for word in ("FID", "sFID", "IS", "precision", "recall", "class accuracy"):
    assert word in printed
  assert ref.exists()  # computed from the built-in data and saved for the next run
  assert results["num_samples"] == 20 and np.isfinite(results["fid"]) and results["fid"] > 0
  saved = json.loads((tmp_path / "eval" / "samples.eval.json").read_text())
  assert saved["fid"] == pytest.approx(results["fid"])
  # Running it again resumes from the finished state: same numbers, no sampling.
  again = sample.main(argv)
  assert again["fid"] == pytest.approx(results["fid"], rel=1e-12)

  # A grid ends with a quick evaluation: accuracy and shapes-FID of class-balanced samples, measured by the
  # classifier that ships with jdpm (copied into the data dir, not trained).
  capsys.readouterr()
  argv = [f"--workdir={tmp_path / 'run'}", "--num-samples=8", "--steps=3", "--quick-eval=16",
          f"--out={tmp_path / 'grid.png'}"]
  metrics = sample.main(argv)
  printed = capsys.readouterr().out
  assert "quick evaluation (16 samples" in printed and "class accuracy" in printed and "shapes-FID" in printed
  assert "next:" in printed
  assert metrics["num_images"] == 16 and 0.0 <= metrics["accuracy"] <= 1.0 and metrics["fid"] > 0
  copied = proxy.classifier_dir("shapes", data_dir) / proxy.CLASSIFIER_FILE
  assert copied.read_bytes() == (proxy.PACKAGED_DIR / "shapes.npz").read_bytes()
  sample.main(argv[:-2] + ["--quick-eval=0", f"--out={tmp_path / 'grid2.png'}"])  # 0 turns it off
  assert "quick evaluation" not in capsys.readouterr().out

