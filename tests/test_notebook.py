"""examples/sampling.ipynb runs headless from top to bottom (short training, few samples)."""

import os
import pathlib

import nbclient
import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_sampling_notebook_executes(tmp_path):
  nb = nbformat.read(ROOT / "examples" / "sampling.ipynb", as_version=4)
  env = {"JDPM_NOTEBOOK_WORKDIR": str(tmp_path / "run"), "JDPM_NOTEBOOK_TRAIN_STEPS": "20",
         "JDPM_NOTEBOOK_NUM_SAMPLES": "10",
         "JDPM_NOTEBOOK_DDPM_STEPS": "25", "JDPM_DATA_DIR": str(tmp_path / "data")}
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "examples")}}).execute()
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  assert "trained steps: 20" in text
  for name in ("UniPC, 10 NFE", "DPM-Solver++(2M), 10 NFE", "DDPM, 25 steps"):
    assert name in text and (tmp_path / "run" / "notebook" / f"{name.split(',')[0]}.png").exists()
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert len(images) == 3
