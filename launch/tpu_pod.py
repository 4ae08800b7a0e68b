"""Cloud TPU VM pod slices: create, copy the code, run on every worker, delete. Dry run by default.

  python launch/tpu_pod.py create --name mp --zone us-west4-a --accelerator-type v5litepod-16
  python launch/tpu_pod.py copy   --name mp --zone us-west4-a            # this checkout -> workers
  python launch/tpu_pod.py run    --name mp --zone us-west4-a --workdir gs://BUCKET/flowmag \
      -- --config configs/flowmag.py --config.flow.checkpoint=gs://BUCKET/raft-things
  python launch/tpu_pod.py delete --name mp --zone us-west4-a

Each prints the gcloud commands it would run (--dry-run, the default); --execute runs them. Check
first that the step fits the slice: `python launch/aot_check.py --config ... --topology v5e:4x4`
(on any CPU machine).

* copy: packs the files git tracks or would track in this checkout (`git ls-files -co
  --exclude-standard`: no .venv, no outputs), sends them to every worker and installs the package
  with its `tpu` extra into ~/magplus_jax/.venv (Python >= 3.11 is needed by jax 0.10; pass
  --python if the image's python3 is older). With --wheel W the wheel is installed instead and only
  configs/ and launch/ are copied as files.
* run: the same `python -m magplus_jax.main` on all workers at once (`--worker=all`) with
  MAGPLUS_DISTRIBUTED=1, so each calls jax.distributed.initialize(), which finds its peers from the
  TPU VM's metadata. On a multi-host slice the workdir must be shared storage (gs://...):
  every host writes its shards of the orbax checkpoint there, and data loading is split per host.
  The ssh session ends the job if your connection drops: use --background to start it under
  nohup with logs in ~/magplus_jax/run.log on each worker.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

REMOTE_DIR = "magplus_jax"  # relative to the worker's home directory
TARBALL = "/tmp/magplus_jax_src.tar.gz"
# Software (runtime) version per TPU generation, from Cloud TPU's documentation for JAX.
RUNTIME_VERSIONS = (("v6e", "v2-alpha-tpuv6e"), ("v5litepod", "v2-alpha-tpuv5-lite"),
                    ("v5p", "v2-alpha-tpuv5"), ("v4", "tpu-ubuntu2204-base"))


def runtime_version(accelerator_type: str) -> str:
  for prefix, version in RUNTIME_VERSIONS:
    if accelerator_type.startswith(prefix):
      return version
  raise ValueError(f"--accelerator-type {accelerator_type!r}: expected e.g. v5litepod-16, v5p-256, "
                   "v4-32 or v6e-16 (or pass --version)")


def _q(args) -> str:
  return " ".join(shlex.quote(str(a)) for a in args)


def _where(a) -> list[str]:
  out = [f"--zone={a.zone}"]
  return out + ([f"--project={a.project}"] if a.project else [])


def ssh(a, command: str) -> str:
  return _q(["gcloud", "compute", "tpus", "tpu-vm", "ssh", a.name, *_where(a), "--worker=all",
             f"--command={command}"])


def create_commands(a) -> list[str]:
  version = a.version or runtime_version(a.accelerator_type)
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", "create", a.name, *_where(a),
         f"--accelerator-type={a.accelerator_type}", f"--version={version}"]
  if a.spot:
    cmd.append("--spot")
  return [_q(cmd)]


def copy_commands(a) -> list[str]:
  repo = os.path.abspath(a.repo)
  scp = ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  unpack = f"mkdir -p ~/{REMOTE_DIR} && tar -xzf ~/{os.path.basename(TARBALL)} -C ~/{REMOTE_DIR}"
  if a.wheel:
    wheel = os.path.basename(a.wheel)
    pack = (f"cd {shlex.quote(repo)} && tar -czf {TARBALL} configs launch")
    install = (f"{unpack} && {a.python} -m venv ~/{REMOTE_DIR}/.venv"
               f" && ~/{REMOTE_DIR}/.venv/bin/pip install -q \"$HOME/{wheel}[tpu]\"")
    sends = [_q(scp + [TARBALL, a.wheel, f"{a.name}:~/", *_where(a), "--worker=all"])]
  else:
    pack = (f"cd {shlex.quote(repo)} && git ls-files -co --exclude-standard -z"
            f" | tar -czf {TARBALL} --null -T -")
    install = (f"{unpack} && cd ~/{REMOTE_DIR} && {a.python} -m venv .venv"
               f" && .venv/bin/pip install -q -e '.[tpu]'")
    sends = [_q(scp + [TARBALL, f"{a.name}:~/", *_where(a), "--worker=all"])]
  return [pack, *sends, ssh(a, install)]


def run_commands(a, main_args: list[str]) -> list[str]:
  if not any(x == "--config" or x.startswith("--config=") for x in main_args):
    raise ValueError("run: give the magplus_jax.main arguments after `--`, e.g. "
                     "-- --config configs/flowmag.py")
  if any(x == "--workdir" or x.startswith("--workdir=") for x in main_args):
    raise ValueError("run: give --workdir to launch/tpu_pod.py itself, not after `--`")
  # MAGPLUS_DISTRIBUTED=1: every worker calls jax.distributed.initialize(), which finds its peers
  # from the TPU VM metadata (magplus_jax/sharding.py).
  job = "MAGPLUS_DISTRIBUTED=1 " + _q([".venv/bin/python", "-m", "magplus_jax.main", "--workdir",
                                       a.workdir, *main_args])
  if a.background:
    job = f"nohup {job} > run.log 2>&1 < /dev/null &"
  return [ssh(a, f"cd ~/{REMOTE_DIR} && {job}")]


def delete_commands(a) -> list[str]:
  return [_q(["gcloud", "compute", "tpus", "tpu-vm", "delete", a.name, *_where(a), "--quiet"])]


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("action", choices=("create", "copy", "run", "delete"))
  p.add_argument("--name", required=True, help="TPU VM (slice) name.")
  p.add_argument("--zone", required=True)
  p.add_argument("--project", default="")
  p.add_argument("--accelerator-type", default="v5litepod-16", help="create: e.g. v5p-256.")
  p.add_argument("--version", default="", help="create: runtime version (default: by type).")
  p.add_argument("--spot", action="store_true", help="create: a Spot (preemptible) slice.")
  p.add_argument("--repo", default=".", help="copy: the checkout to send.")
  p.add_argument("--wheel", default="", help="copy: install this wheel instead of the sources.")
  p.add_argument("--python", default="python3", help="copy: interpreter for the venv (>= 3.11).")
  p.add_argument("--workdir", default="", help="run: output directory (gs://... on multi-host).")
  p.add_argument("--background", action="store_true", help="run: nohup, log to run.log.")
  mode = p.add_mutually_exclusive_group()
  mode.add_argument("--dry-run", action="store_true",
                    help="Print the commands without running them (the default).")
  mode.add_argument("--execute", action="store_true", help="Run the commands.")
  return p


def commands(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  ours, main_args = ((argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv
                     else (argv, []))
  a = parser().parse_args(ours)
  if a.action == "run":
    if not a.workdir:
      raise ValueError("run: --workdir is required (gs://BUCKET/... on a multi-host slice)")
    return a, run_commands(a, main_args)
  if main_args:
    raise ValueError(f"{a.action}: arguments after `--` are only for run")
  return a, {"create": create_commands, "copy": copy_commands,
             "delete": delete_commands}[a.action](a)


def main(argv=None) -> int:
  try:
    a, cmds = commands(sys.argv[1:] if argv is None else argv)
  except ValueError as e:
    print(f"tpu_pod: {e}", file=sys.stderr)
    return 2
  if a.action == "run" and not a.workdir.startswith("gs://"):
    print("# note: a multi-host slice needs a shared workdir (gs://...); a local path works on a "
          "single-host slice only", file=sys.stderr)
  for cmd in cmds:
    print(cmd, flush=True)
    if a.execute:
      rc = subprocess.call(cmd, shell=True)
      if rc:
        print(f"tpu_pod: command failed with exit status {rc}", file=sys.stderr)
        return rc
  return 0


if __name__ == "__main__":
  sys.exit(main())
