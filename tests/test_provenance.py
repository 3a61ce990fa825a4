"""Every file in tests/data has a known producer: the manifest table of tools/README.md names the
script (or run) that writes it, and the test modules that read reference data say which script
made it."""

import fnmatch
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
README = ROOT / "tools" / "README.md"



def manifest():
  """[(patterns, script)] from the table between the manifest markers of tools/README.md."""
  text = README.read_text()
  body = text.split("<!-- manifest:start -->", 1)[1].split("<!-- manifest:end -->", 1)[0]
  rows = []
  for line in body.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) < 2 or not cells[0].startswith("`"):
      continue  # header and separator rows
    patterns = re.findall(r"`([^`]+)`", cells[0])
    script = re.findall(r"`([^`]+)`", cells[1])
    assert patterns and len(script) == 1, line
    rows.append((patterns, script[0]))
  return rows


def test_manifest_is_well_formed():
  rows = manifest()
  assert len(rows) >= 10
  for patterns, script in rows:
    assert (ROOT / script).is_file(), f"{script} (producer of {patterns}) does not exist"
    for pattern in patterns:
      if not any(ch in pattern for ch in "*?["):
        assert (DATA / pattern).exists(), f"manifest names tests/data/{pattern}, which is missing"


def test_every_data_entry_has_a_producing_script():
  rows = manifest()
  orphans = [entry.name for entry in sorted(DATA.iterdir())
             if not any(fnmatch.fnmatch(entry.name, p) for patterns, _ in rows for p in patterns)]
  assert not orphans, (f"tests/data entries with no producing script in the tools/README.md "
                       f"manifest: {orphans}")


def test_reading_modules_name_their_producing_script():
  rows = manifest()
  missing = {}
  for module in sorted((ROOT / "tests").glob("test_*.py")):
    if module.name == pathlib.Path(__file__).name:
      continue
    text = module.read_text()
    for patterns, script in rows:
      exact = [p for p in patterns if not any(ch in p for ch in "*?[")]
      if any(re.search(rf"\b{re.escape(p)}\b", text) for p in exact) and script not in text:
        missing.setdefault(module.name, set()).add(script)
  assert not missing, f"modules reading tests/data without naming the producing script: {missing}"
