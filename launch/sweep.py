"""Expands a config's `sweep(add)` into runs and launches them (locally, on a TPU slice, or SLURM).

  python launch/sweep.py --config configs/ablations.py --dry-run
  python launch/sweep.py --config configs/ablations.py:demag --workdir-root /tmp/abl
  python launch/sweep.py --config configs/ablations.py --launcher slurm --workdir-root /shared/abl \
      --config.flow.checkpoint=/shared/raft-things   # --config.* options go to every run
  python launch/sweep.py --config configs/ablations.py --launcher tpu --tpu-name mp --zone Z \
      --workdir-root gs://BUCKET/abl --only 0,3

The convention is big_vision's: the config module defines `sweep(add)` and each call
`add(**{"model.norm": "batch", ...})` is one run of `python -m magplus_jax.main --config FILE[:arg]
--workdir ROOT/NAME --config.model.norm=batch ...`. Every override key must exist in the config
(the locked ConfigDict refuses others) and the resulting config must pass config_lib.validate;
both are checked for all runs before any starts.

Launchers: local (default; runs one after the other, continues past failures, exit status 1 if any
failed), tpu (launch/tpu_pod.py's run command per run, one after the other on one slice), slurm (one
sbatch script per run, launch/slurm.py, submitted with sbatch). --dry-run prints without running.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # run as a script: make the repository importable
  sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from launch import slurm, tpu_pod  # noqa: E402
from magplus_jax import config_lib  # noqa: E402


def load_module(path: str):
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config {path}: no such file")
  spec = importlib.util.spec_from_file_location(
      "sweep_config_" + re.sub(r"\W", "_", os.path.basename(path)), path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def expand(config_path: str) -> list[dict]:
  """The runs of `config_path`'s sweep(add): a list of {dotted key: value} override dicts."""
  module = load_module(config_path)
  if not hasattr(module, "sweep"):
    raise ValueError(f"{config_path} has no sweep(add) function")
  runs = []
  module.sweep(lambda **kw: runs.append(dict(kw)))
  if not runs:
    raise ValueError(f"{config_path}: sweep(add) added no runs")
  return runs


def format_value(v) -> str:
  """The text config_flags parses back to v (strings as they are, tuples as Python literals)."""
  return v if isinstance(v, str) else repr(v)


def run_name(index: int, overrides: dict) -> str:
  """"03_w_color=0.0": the index and the overridden leaf names (paths left out) for workdirs."""
  parts = []
  for k, v in overrides.items():
    keys = k.split(".")
    key = "_".join(keys[-2:]) if keys[-1] == "name" else keys[-1]
    text = format_value(v)
    if "/" not in text:
      parts.append(f"{key}={text}")
  tail = re.sub(r"[^A-Za-z0-9_.=+-]", "_", ",".join(parts))[:100]
  return f"{index:02d}_{tail or 'base'}"


def check_overrides(config, overrides: dict) -> None:
  """Applies overrides to a locked copy of the config and validates the result as main would.

  Unknown keys, wrong types and values config_lib.validate refuses (e.g. model.norm="layer") raise
  ValueError naming the run's overrides, so a bad sweep fails before any run starts.
  """
  c = config.copy_and_resolve_references()
  c.lock()
  try:
    c.update_from_flattened_dict(overrides)
    config_lib.validate(c)
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    raise ValueError(f"sweep override {overrides}: {e}") from e


def main_args(config_arg: str, overrides: dict) -> list[str]:
  return ["--config", config_arg] + [f"--config.{k}={format_value(v)}"
                                      for k, v in overrides.items()]


def parse_common(extra: list[str]) -> dict:
  """--config.k=v options given to the sweep itself -> {k: v (text)}; they apply to every run."""
  out = {}
  for arg in extra:
    m = re.fullmatch(r"--config\.([\w.]+)=(.*)", arg)
    if m is None:
      raise ValueError(f"unrecognised argument {arg!r} (only --config.key=value is passed on)")
    out[m.group(1)] = m.group(2)
  return out


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="Config file with sweep(add), optionally :arg.")
  p.add_argument("--dry-run", action="store_true", help="Print the runs and commands only.")
  p.add_argument("--launcher", choices=("local", "tpu", "slurm"), default="local")
  p.add_argument("--workdir-root", default="/tmp/magplus_sweep")
  p.add_argument("--only", default="", help="Comma-separated run indices to launch.")
  p.add_argument("--python", default=sys.executable, help="local: the interpreter.")
  g = p.add_argument_group("tpu launcher (see launch/tpu_pod.py)")
  g.add_argument("--tpu-name", default="")
  g.add_argument("--zone", default="")
  g.add_argument("--project", default="")
  g = p.add_argument_group("slurm launcher (see launch/slurm.py)")
  g.add_argument("--nodes", type=int, default=1)
  g.add_argument("--gpus-per-node", type=int, default=8)
  g.add_argument("--per", choices=("gpu", "node"), default="gpu")
  g.add_argument("--partition", default="")
  g.add_argument("--time", default="24:00:00")
  return p


def plan(argv: list[str]) -> tuple[argparse.Namespace, list[dict]]:
  """Parses argv and returns (args, runs); each run: index, name, overrides, workdir, command."""
  args, extra = parser().parse_known_args(argv)
  common = parse_common(extra)
  path, _, arg = args.config.partition(":")
  module = load_module(path)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path} has no get_config(arg) function")
  config = module.get_config(arg or None)
  runs = []
  for i, overrides in enumerate(expand(path)):
    check_overrides(config, overrides)
    merged = {k: format_value(v) for k, v in overrides.items()}
    merged.update(common)  # the sweep's own --config.k=v win (e.g. a checkpoint path)
    name = run_name(i, overrides)
    workdir = os.path.join(args.workdir_root, name)
    runs.append({"index": i, "name": name, "overrides": overrides, "workdir": workdir,
                 "main_args": main_args(args.config, merged)})
  if args.only:
    keep = {int(x) for x in args.only.split(",") if x.strip()}
    bad = keep - {r["index"] for r in runs}
    if bad:
      raise ValueError(f"--only {args.only}: no runs {sorted(bad)} (there are {len(runs)})")
    runs = [r for r in runs if r["index"] in keep]
  return args, runs


def launch_commands(args, run: dict) -> list[str]:
  """Shell commands that start `run` with args.launcher."""
  if args.launcher == "local":
    return [" ".join(shlex.quote(a) for a in [args.python, "-m", "magplus_jax.main", "--workdir",
                                               run["workdir"], *run["main_args"]])]
  if args.launcher == "tpu":
    if not (args.tpu_name and args.zone):
      raise ValueError("--launcher tpu needs --tpu-name and --zone")
    a = tpu_pod.parser().parse_args(["run", "--name", args.tpu_name, "--zone", args.zone,
                                     "--project", args.project, "--workdir", run["workdir"]])
    return tpu_pod.run_commands(a, run["main_args"])
  script = os.path.join(run["workdir"], "job.sbatch")
  return [f"mkdir -p {shlex.quote(run['workdir'])} && cat > {shlex.quote(script)} <<'SBATCH'\n"
          + slurm.make_sbatch(main_args=run["main_args"], workdir=run["workdir"], nodes=args.nodes,
                              gpus_per_node=args.gpus_per_node, per=args.per,
                              job_name=f"magplus-{run['name']}"[:64], time=args.time,
                              partition=args.partition, repo=_ROOT)
          + "SBATCH", f"sbatch {shlex.quote(script)}"]


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  try:
    args, runs = plan(argv)
    cmds = [(r, launch_commands(args, r)) for r in runs]
  except (ValueError, FileNotFoundError) as e:
    print(f"sweep: {e}", file=sys.stderr)
    return 2
  print(f"# {len(runs)} runs from {args.config} ({args.launcher})")
  failed = []
  for run, commands in cmds:
    print(f"# run {run['index']} {run['name']}: {run['overrides'] or '(base)'}")
    for cmd in commands:
      print(cmd, flush=True)
      if not args.dry_run:
        rc = subprocess.call(cmd, shell=True)
        if rc:
          print(f"# run {run['index']} {run['name']}: exit status {rc}", flush=True)
          failed.append(run["name"])
          break
  if failed:
    print(f"# {len(failed)} of {len(runs)} runs failed: {', '.join(failed)}")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
