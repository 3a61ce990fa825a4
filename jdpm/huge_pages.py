"""Transparent huge pages for the host memory of jdpm's programs (Linux, glibc >= 2.35; standard library only).

Why: XLA:CPU allocates a program's temporaries afresh at every execution. Buffers above glibc's mmap
threshold (32 MiB at most) are mapped anew each time, and the kernel then faults them in and zeroes them
4 KiB at a time. A training step of the S/2 models touches 0.7-1.3 GB this way, 0.19-0.33 M page faults,
about a sixth of the step on a 2-core CPU. glibc's tunable ``glibc.malloc.hugetlb=1`` asks for transparent
huge pages on the memory malloc maps (2 MiB per fault): 10-20x fewer faults and +20% training throughput
for DiT-S/2, EDT-S/2 and MDTv2-S/2 at batch 8 (BENCHMARKS.md, the reading of the huge-page
A/B sections).

glibc reads its tunables once, when the process starts, so `restart_with_huge_pages` re-executes the
running program (same process id, arguments and environment, plus the tunable). jdpm's command-line
programs call it first thing; in a notebook, start the kernel with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` in its environment instead. Nothing changes where the kernel
has transparent huge pages switched off, on other systems, or with ``JDPM_HUGE_PAGES=0``.
"""

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "JDPM_HUGE_PAGES"  # "0": leave the allocator as it is
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version():
  """(major, minor) of the C library, or None when it is not glibc."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None
  except (AttributeError, ValueError, OSError):
    return None


def _thp_available() -> bool:
  """Whether the kernel gives transparent huge pages to memory that asks for them ("always" or "madvise")."""
  try:
    with open(_THP_MODE) as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def wanted(environ=None) -> bool:
  """Whether `restart_with_huge_pages` would re-execute this process with `environ` (default os.environ)."""
  environ = os.environ if environ is None else environ
  if environ.get(OPT_OUT) == "0" or "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
    return False
  version = _glibc_version()
  return sys.platform == "linux" and version is not None and version >= (2, 35) and _thp_available()


def restart_with_huge_pages() -> None:
  """Re-executes this program with ``glibc.malloc.hugetlb=1`` added to GLIBC_TUNABLES; returns if not wanted.

  Call it before the program does any work: the new process starts from the beginning. The tunable is
  then in the environment, so the new process (and any it starts) does not restart again.
  """
  if not wanted():
    return
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  env = dict(os.environ, GLIBC_TUNABLES=f"{tunables}:{TUNABLE}" if tunables else TUNABLE)
  # sys.orig_argv keeps the interpreter's own options (-m module, -X ...), which sys.argv drops.
  argv = [sys.executable, *sys.orig_argv[1:]]
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, argv, env)
  except OSError:  # cannot re-execute (an unusual launcher): go on without huge pages
    return
