"""What every benchmark here shares: one case per fresh child process, its result as one JSON line,
its peak memory, and the golden-recipe weights.

Why a child per case: ru_maxrss is a high-water mark of the whole process, so only a process that
ran nothing else reports the case's own peak memory; and a case that crashes (out of memory, a
missing optional dependency) costs its row, not the run.

  result, err = run_child(__file__, ["--impl", "jax", "--batch", "4"])   # parent side
  emit({"frames_per_s": ..., "peak_rss_mib": peak_rss_mib()})          # child side (--child)

The golden weights come through tests/golden_utils.py (the same loader and checksum the
*_vs_reference tests use; fixture directory $MAGPLUS_GOLDEN_DIR or tests/golden).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "RESULT "


def emit(result: dict) -> None:
  """The child's answer: one line the parent finds among whatever else the child prints."""
  print(PREFIX + json.dumps(result), flush=True)


def run_child(script: str, args: list[str], *, child_flag: list[str] | None = None
              ) -> tuple[dict | None, str]:
  """Runs `python script --child ARGS` (or child_flag + ARGS) and returns (its last RESULT line
  parsed, "") or (None, the tail of its stderr and its exit status)."""
  flag = ["--child"] if child_flag is None else child_flag
  proc = subprocess.run([sys.executable, os.path.abspath(script), *flag, *args],
                        capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(PREFIX)]
  if proc.returncode or not lines:
    return None, f"exit status {proc.returncode}\n{proc.stderr[-3000:]}"
  return json.loads(lines[-1][len(PREFIX):]), ""


def peak_rss_mib() -> float:
  """This process's peak resident memory in MiB (Linux reports ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def golden_fixture(name: str):
  """(arrays, meta, torch-named state dict) of a golden fixture, weights checksum-verified."""
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  import golden_utils  # pylint: disable=g-import-not-at-top
  return golden_utils.load_fixture(name)


def submodule(state_dict: dict, prefix: str) -> dict:
  """The entries under `prefix` (e.g. "generator.") with the prefix removed."""
  return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
