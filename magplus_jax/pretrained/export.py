"""Copies the networks of a configs/pretrained.py run into the package (weights only).

  python -m magplus_jax.pretrained.export RUN_ROOT [--out magplus_jax/pretrained]

RUN_ROOT holds magplus/ and demag/, the two workdirs of configs/pretrained.py. Each is written with
checkpointing.export_magnifier (temporary name, then renamed; the previous export is replaced).
"""
import argparse
import os
import sys

from magplus_jax import checkpointing, pretrained


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("run_root")
  parser.add_argument("--out", default=pretrained.DIR)
  parser.add_argument("--tasks", nargs="+", default=list(pretrained.TASKS))
  args = parser.parse_args(argv)
  for task in args.tasks:
    src = os.path.join(args.run_root, task)
    try:
      step = checkpointing.export_magnifier(src, os.path.join(args.out, task), overwrite=True)
    except (OSError, ValueError) as e:
      print(f"magplus_jax.pretrained.export: {task}: {e}", file=sys.stderr)
      return 1
    print(f"{task}: step {step} of {src} -> {os.path.join(args.out, task)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
