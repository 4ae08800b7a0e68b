"""launch/: the sweep expansion of configs/ablations.py, and the SLURM / TPU pod command writers."""
import os
import shlex
import shutil
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from configs import ablations, flowmag
from launch import slurm, sweep, tpu_pod
from magplus_jax import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATIONS = os.path.join(ROOT, "configs", "ablations.py")
EXPECTED_RUNS = 17


def _parse_like_main(main_args):
  """The config magplus_jax.main would get for these arguments (locked ConfigDict, config_flags)."""
  argv = ["main", *main_args]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  return fv.config


def test_dry_run_lists_every_run(capsys):
  assert sweep.main(["--config", ABLATIONS, "--dry-run", "--workdir-root", "/tmp/abl"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0] == f"# {EXPECTED_RUNS} runs from {ABLATIONS} (local)"
  runs = [l for l in out if l.startswith("# run ")]
  cmds = [l for l in out if not l.startswith("#")]
  assert len(runs) == len(cmds) == EXPECTED_RUNS
  for cmd in cmds:
    argv = shlex.split(cmd)
    assert argv[1:3] == ["-m", "magplus_jax.main"]
    assert argv[argv.index("--config") + 1] == ABLATIONS
    assert argv[argv.index("--workdir") + 1].startswith("/tmp/abl/")
  assert len({shlex.split(c)[4] for c in cmds}) == EXPECTED_RUNS  # distinct workdirs


def test_scripts_run_as_commands():
  """The README's commands, as a user types them (script mode: launch/ is not a package there)."""
  out = subprocess.run([sys.executable, "launch/sweep.py", "--config", "configs/ablations.py",
                        "--dry-run"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
  assert out.startswith(f"# {EXPECTED_RUNS} runs from configs/ablations.py (local)")
  out = subprocess.run([sys.executable, "launch/tpu_pod.py", "delete", "--name", "mp", "--zone",
                        "z", "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                       check=True).stdout
  assert out.startswith("gcloud compute tpus tpu-vm delete mp")


def _check_runs(config_path: str, expected: int) -> dict:
  """Every run's overrides reach the parsed, validated config with their types; {key: values}."""
  _, runs = sweep.plan(["--config", config_path, "--dry-run"])
  assert len(runs) == expected
  seen = {}
  for run in runs:
    config = _parse_like_main(run["main_args"])
    for key, value in run["overrides"].items():
      got = config
      for part in key.split("."):
        got = got[part]
      assert got == value and type(got) is type(value), (key, value, got)
      seen.setdefault(key, set()).add(value)
    config_lib.validate(config)
  return seen


def test_every_override_exists_and_parses():
  seen = _check_runs(ABLATIONS, EXPECTED_RUNS)
  # The ablation axes the design asks for.
  assert seen["model.norm"] == {"batch", "none"}
  assert {"loss.w_color", "loss.w_pixel", "data.alpha_max", "flow.name"} <= seen.keys()
  assert seen["task"] == {"demag", "shared"}
  assert seen["flow.name"] == {"raft"}
  assert ablations.get_config().model.norm == "group"  # the base is the third option


def test_unknown_or_mistyped_key_fails(tmp_path, capsys):
  config = ablations.get_config()
  with pytest.raises(ValueError, match="nrom"):
    sweep.check_overrides(config, {"model.nrom": "batch"})
  with pytest.raises(ValueError):
    sweep.check_overrides(config, {"model.levels": "five"})
  with pytest.raises(ValueError):
    sweep.check_overrides(config, {"no_such_section.x": 1})
  # A known key with a value config_lib.validate refuses fails before any run starts.
  with pytest.raises(ValueError, match="config.model.norm='layer'"):
    sweep.check_overrides(config, {"model.norm": "layer"})
  bad = tmp_path / "bad_sweep.py"
  bad.write_text("from configs.ablations import get_config\n"
                 "def sweep(add):\n  add(**{'model.norm': 'batch'})\n"
                 "  add(**{'loss.w_colour': 1.0})\n")
  assert sweep.main(["--config", str(bad), "--dry-run"]) == 2
  assert "w_colour" in capsys.readouterr().err
  # The locked config behind main refuses it too.
  with pytest.raises(Exception, match="w_colour"):
    _parse_like_main(["--config", ABLATIONS, "--config.loss.w_colour=1.0"])


def test_common_overrides_and_selection(capsys):
  args = ["--config", ABLATIONS + ":demag", "--dry-run", "--only", "0,12",
          "--config.flow.checkpoint=/data/raft", "--config.total_steps=7"]
  _, runs = sweep.plan(args)
  assert [r["index"] for r in runs] == [0, 12]
  for run in runs:
    config = _parse_like_main(run["main_args"])
    assert config.flow.checkpoint == "/data/raft" and config.total_steps == 7
    assert config.task == "demag"
  assert sweep.main(["--config", ABLATIONS, "--dry-run", "--only", "99"]) == 2
  assert sweep.main(["--config", ABLATIONS, "--dry-run", "--bogus"]) == 2
  capsys.readouterr()


def test_sweep_launchers(capsys):
  assert sweep.main(["--config", ABLATIONS, "--dry-run", "--launcher", "tpu", "--tpu-name", "mp",
                     "--zone", "us-west4-a", "--workdir-root", "gs://b/abl"]) == 0
  cmds = [l for l in capsys.readouterr().out.splitlines() if not l.startswith("#")]
  assert len(cmds) == EXPECTED_RUNS
  assert all(c.startswith("gcloud compute tpus tpu-vm ssh mp") and "--worker=all" in c
             for c in cmds)
  assert sweep.main(["--config", ABLATIONS, "--dry-run", "--launcher", "tpu"]) == 2
  capsys.readouterr()
  assert sweep.main(["--config", ABLATIONS, "--dry-run", "--launcher", "slurm", "--only", "1"]) == 0
  out = capsys.readouterr().out
  assert "#SBATCH --ntasks-per-node=8" in out and "sbatch /tmp/magplus_sweep/01_norm=batch/" in out


# ------------------------------------------------------------------------------------------- slurm


def test_slurm_script_per_gpu_and_per_node(tmp_path):
  args = ["--config", "configs/flowmag.py", "--config.batch_size=64"]
  per_gpu = slurm.make_sbatch(main_args=args, workdir="/shared/run", nodes=2, gpus_per_node=4,
                              repo="/src/magplus")
  assert "#SBATCH --nodes=2" in per_gpu and "#SBATCH --ntasks-per-node=4" in per_gpu
  assert "#SBATCH --gpus-per-node=4" in per_gpu and "JAX_LOCAL_DEVICE_IDS" not in per_gpu
  assert "export MAGPLUS_DISTRIBUTED=1" in per_gpu  # 8 processes: jax.distributed from SLURM
  one = slurm.make_sbatch(main_args=args, workdir="/w", nodes=1, gpus_per_node=4, per="node")
  assert "MAGPLUS_DISTRIBUTED" not in one  # a single process needs no jax.distributed
  srun = [l for l in per_gpu.splitlines() if l.startswith("srun ")]
  assert len(srun) == 1
  argv = shlex.split(srun[0])
  assert argv[argv.index("-m") + 1] == "magplus_jax.main"
  assert argv[argv.index("--workdir") + 1] == "/shared/run" and argv[-3:] == args
  per_node = slurm.make_sbatch(main_args=args, workdir="/shared/run", nodes=2, gpus_per_node=4,
                               per="node", requeue=True, partition="gpu")
  assert "#SBATCH --ntasks-per-node=1" in per_node
  assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3" in per_node
  assert "#SBATCH --requeue" in per_node and "#SBATCH --partition=gpu" in per_node
  if shutil.which("bash"):
    for text in (per_gpu, per_node):
      path = tmp_path / "job.sbatch"
      path.write_text(text)
      assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
  with pytest.raises(ValueError, match="--config"):
    slurm.make_sbatch(main_args=[], workdir="/w")
  with pytest.raises(ValueError, match="--workdir"):
    slurm.make_sbatch(main_args=args + ["--workdir", "/x"], workdir="/w")
  with pytest.raises(ValueError, match="per"):
    slurm.make_sbatch(main_args=args, workdir="/w", per="core")


def test_slurm_cli_writes_script(tmp_path, capsys):
  out = tmp_path / "job.sbatch"
  assert slurm.main(["--workdir", str(tmp_path / "run"), "--nodes", "1", "--gpus-per-node", "2",
                     "--out", str(out), "--", "--config", "configs/default.py"]) == 0
  text = out.read_text()
  assert text.startswith("#!/bin/bash") and "--config configs/default.py" in text
  assert slurm.main(["--workdir", "/w", "--", "--config", "configs/default.py"]) == 0
  assert "srun" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------- tpu pod


def _cmds(argv):
  _, cmds = tpu_pod.commands(argv)
  for c in cmds:
    shlex.split(c)  # every command is valid shell quoting
  return cmds


def test_tpu_pod_commands():
  where = ["--name", "mp", "--zone", "us-west4-a", "--project", "proj"]
  (create,) = _cmds(["create", *where, "--accelerator-type", "v5p-256", "--spot"])
  assert create.startswith("gcloud compute tpus tpu-vm create mp")
  assert "--version=v2-alpha-tpuv5" in create and "--spot" in create and "--project=proj" in create
  assert "v2-alpha-tpuv5-lite" in _cmds(["create", *where])[0]  # default v5litepod-16
  pack, send, install = _cmds(["copy", *where])
  assert "git ls-files -co --exclude-standard" in pack
  assert send.startswith("gcloud compute tpus tpu-vm scp") and "--worker=all" in send
  assert "--worker=all" in install and "pip install" in install and "[tpu]" in install
  (run,) = _cmds(["run", *where, "--workdir", "gs://b/run", "--", "--config", "configs/flowmag.py",
                  "--config.batch_size=48"])
  assert "tpu-vm ssh mp" in run and "--worker=all" in run
  remote = [a for a in shlex.split(run) if a.startswith("--command=")][0]
  assert "-m magplus_jax.main --workdir gs://b/run --config configs/flowmag.py" in remote
  assert "MAGPLUS_DISTRIBUTED=1 " in remote  # every worker initialises jax.distributed
  (delete,) = _cmds(["delete", *where])
  assert delete.startswith("gcloud compute tpus tpu-vm delete mp") and "--quiet" in delete
  for bad in (["run", *where, "--", "--config", "c.py"],  # no --workdir
              ["run", *where, "--workdir", "gs://b"],  # no --config
              ["create", *where, "--accelerator-type", "tpu-9"]):
    with pytest.raises(ValueError):
      tpu_pod.commands(bad)
  assert tpu_pod.main(["run", *where, "--workdir", "gs://b"]) == 2
  assert tpu_pod.main(["delete", *where, "--dry-run"]) == 0  # prints only
  with pytest.raises(SystemExit):
    tpu_pod.parser().parse_args(["delete", *where, "--dry-run", "--execute"])


def _keys(d, prefix=""):
  out = set()
  for k, v in d.items():
    out |= _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
  return out


def test_configs_build():
  # Config files only change fields of the base config: a misspelt key would silently add a new
  # one (get_config's ConfigDict is not locked yet), e.g. data.eval_examples for num_eval_examples.
  base = _keys(config_lib.base_config().to_dict())
  for module in (flowmag, ablations):
    assert _keys(module.get_config().to_dict()) == base, module.__name__
  for arg in (None, "demag", "shared"):
    for module in (flowmag, ablations):
      config_lib.validate(module.get_config(arg))
  c = flowmag.get_config()
  assert (c.model.levels, c.model.width, c.data.image_size, c.flow.name) == (5, 64, 512, "raft")
  assert (c.batch_size, c.loss.w_mag, c.loss.w_color, c.data.alpha_max) == (40, 1.0, 10.0, 16.0)
  with pytest.raises(ValueError):
    flowmag.get_config("nope")


def test_pretrained_recipe_ablations_parse():
  """configs/pretrained.py's sweep: each loss term alone, light noise, the Eulerian form."""
  seen = _check_runs(os.path.join(ROOT, "configs", "pretrained.py"), 5)
  assert seen["model.output"] == {"eulerian_gate"} and seen["loss.w_pixel"] == {0.0}
