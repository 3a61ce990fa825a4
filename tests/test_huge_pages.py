"""`jdpm.huge_pages`: when a program restarts itself with glibc's huge-page tunable, and that it then has it."""

import os
import pathlib
import subprocess
import sys

import pytest

from jdpm import huge_pages

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def capable(monkeypatch):
  """A Linux glibc 2.36 system with transparent huge pages on request, whatever this machine is."""
  monkeypatch.setattr(huge_pages.sys, "platform", "linux")
  monkeypatch.setattr(huge_pages, "_glibc_version", lambda: (2, 36))
  monkeypatch.setattr(huge_pages, "_thp_available", lambda: True)


def test_wanted_only_without_the_tunable_and_without_the_opt_out(capable):
  assert huge_pages.wanted({})
  assert huge_pages.wanted({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "JDPM_HUGE_PAGES": "1"})
  assert not huge_pages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
  assert not huge_pages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})  # the user's own choice stands
  assert not huge_pages.wanted({"JDPM_HUGE_PAGES": "0"})


def test_not_wanted_where_glibc_or_the_kernel_cannot(capable, monkeypatch):
  monkeypatch.setattr(huge_pages, "_glibc_version", lambda: (2, 34))  # the tunable came with 2.35
  assert not huge_pages.wanted({})
  monkeypatch.setattr(huge_pages, "_glibc_version", lambda: None)  # musl, macOS
  assert not huge_pages.wanted({})
  monkeypatch.setattr(huge_pages, "_glibc_version", lambda: (2, 36))
  monkeypatch.setattr(huge_pages, "_thp_available", lambda: False)
  assert not huge_pages.wanted({})


def test_thp_mode_parsing(tmp_path, monkeypatch):
  mode = tmp_path / "enabled"
  monkeypatch.setattr(huge_pages, "_THP_MODE", str(mode))
  assert not huge_pages._thp_available()  # no such file: not Linux, or no THP support
  for text, expected in (("always [madvise] never", True), ("[always] madvise never", True),
                         ("always madvise [never]", False)):
    mode.write_text(text + "\n")
    assert huge_pages._thp_available() is expected


def test_restart_keeps_arguments_and_adds_the_tunable_once(tmp_path):
  """A real restart: the program runs again from the start with its arguments and the tunable added."""
  if not huge_pages.wanted({k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}):
    pytest.skip("this system cannot use glibc's huge-page tunable (no glibc >= 2.35 or THP off)")
  script = tmp_path / "program.py"
  script.write_text(
      "import os, sys\n"
      f"sys.path.insert(0, {str(ROOT)!r})\n"
      "from jdpm import huge_pages\n"
      "print('start', os.environ.get('GLIBC_TUNABLES'), flush=True)\n"
      "huge_pages.restart_with_huge_pages()\n"
      "print('args', sys.argv[1:])\n")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JDPM_HUGE_PAGES")}
  env["GLIBC_TUNABLES"] = "glibc.malloc.arena_max=4"
  out = subprocess.run([sys.executable, str(script), "a", "b c"], env=env, capture_output=True, text=True,
                       check=True).stdout.splitlines()
  assert out == ["start glibc.malloc.arena_max=4", "start glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1",
                 "args ['a', 'b c']"]
