"""Training survives what happens to real jobs: SIGKILL, SIGTERM, damaged checkpoints, NaN steps.

* SIGKILL at seeded moments (in the middle of a checkpoint save, and at a random delay after one)
  and SIGTERM (the job checkpoints the current step, says which, exits 0), restarting until done:
  the final state is bit-identical to an uninterrupted run's. One chain of 4 CLI processes covers
  the three interruptions (process start-up dominates the cost on 2 cores).
* A damaged newest checkpoint (left half-written by a kill, files missing, garbage bytes): the run
  falls back to the previous step, says so, deletes nothing, and still ends bit-identical.
* nan_policy=skip: non-finite steps are skipped and counted; the parameters stay finite.

The kill / SIGTERM chain runs the real CLI (`python -m magplus_jax.main`) in subprocesses; the
compilation cache set by conftest.py is inherited, so restarts do not recompile.
"""
import glob
import hashlib
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, tiny_config
from magplus_jax import train

TOTAL = 6
# configs/default.py made as small as tests/conftest.py's tiny_config, from the command line.
TINY = ("--config.data.image_size=32", "--config.data.num_eval_examples=8",
        "--config.model.levels=2", "--config.model.width=8", "--config.batch_size=8",
        "--config.flow.levels=2", "--config.flow.iters=1", "--config.flow.iters_finest=2",
        "--config.optimizer.schedule=constant", "--config.checkpoint.async_save=False",
        "--config.eval_every=0", "--config.log_every=1", f"--config.total_steps={TOTAL}")


def _cli(workdir, *extra):
  return [sys.executable, "-m", "magplus_jax.main", "--config",
          os.path.join(ROOT, "configs", "default.py"), "--workdir", str(workdir), *TINY, *extra]


def _tiny(**overrides):
  """The in-process twin of TINY (same state trajectory)."""
  kw = {"total_steps": TOTAL, "log_every": 1, "checkpoint.every": 1}
  kw.update(overrides)
  return tiny_config(**kw)


class Job:
  """A CLI training run in a subprocess; its stderr (the absl log) is collected line by line."""

  def __init__(self, workdir, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    self.proc = subprocess.Popen(_cli(workdir, *extra), cwd=ROOT, env=env, text=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    self.lines = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stderr:
      self.lines.append(line.rstrip("\n"))

  def wait(self, timeout=600):
    rc = self.proc.wait(timeout=timeout)
    self._reader.join(timeout=30)
    return rc

  @property
  def log(self):
    return "\n".join(self.lines)


def _steps(ckdir):
  return sorted(int(n) for n in os.listdir(ckdir) if n.isdigit()) if os.path.isdir(ckdir) else []


def _state(workdir, step=None):
  mngr = ocp.CheckpointManager(os.path.join(str(workdir), "checkpoints"))
  step = mngr.latest_step() if step is None else step
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  mngr.close()
  return step, state


def _assert_same_state(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _hashes(directory):
  out = []
  for f in glob.glob(os.path.join(directory, "**", "*"), recursive=True):
    if os.path.isfile(f):
      with open(f, "rb") as fh:
        out.append(hashlib.sha256(fh.read()).hexdigest())
  return sorted(out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run (in-process: the CLI runs below must match it bit for bit, so this also
  checks that `python -m magplus_jax.main` computes what train.train_and_evaluate does)."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  train.train_and_evaluate(_tiny(), workdir)
  step, state = _state(workdir)
  assert step == TOTAL and int(state["step"]) == TOTAL
  return workdir, state


# ------------------------------------------------------------------------- SIGKILL / SIGTERM
def _wait_for(job, predicate, what):
  deadline = time.time() + 600
  while job.proc.poll() is None and time.time() < deadline:
    if predicate():
      return True
    time.sleep(0.002)
  return False


def _kill_when(job, ckdir, event, step, delay=0.0):
  """SIGKILLs the job while step's save is in progress ("mid_save": orbax's temporary directory
  is there) or `delay` s after step's checkpoint is final ("after_save")."""
  if event == "mid_save":  # (if the save was too quick to be seen, right after it)
    hit = lambda: (glob.glob(os.path.join(ckdir, f"{step}.orbax-checkpoint-tmp*"))
                   or os.path.isdir(os.path.join(ckdir, str(step))))
  else:
    hit = lambda: os.path.isdir(os.path.join(ckdir, str(step)))
  if _wait_for(job, hit, event):
    time.sleep(delay)
    job.proc.send_signal(signal.SIGKILL)
  rc = job.wait()
  return {"event": event, "step": step, "rc": rc, "steps_left": _steps(ckdir),
          "tmp_dirs": sorted(os.path.basename(p) for p in glob.glob(os.path.join(ckdir, "*tmp*")))}


@pytest.mark.slow
def test_sigkill_sigterm_sigkill_then_restart_is_bit_identical(reference, tmp_path):
  """4 CLI processes on one workdir: SIGKILL in the middle of a save, SIGTERM, SIGKILL at a random
  delay after a save, then a run to the end; each restart resumes from the newest complete step."""
  _, ref_state = reference
  rng = random.Random(20251124)  # the moments are seeded; what orbax is writing then is not
  workdir = tmp_path / "interrupted"
  ckdir = os.path.join(workdir, "checkpoints")
  seen = []

  # 1. SIGKILL while orbax writes step a (a half-written temporary directory is left behind)
  a = rng.randint(2, 3)
  job = Job(workdir, "--config.checkpoint.every=1")
  seen.append(_kill_when(job, ckdir, "mid_save", a))
  assert seen[-1]["rc"] == -signal.SIGKILL, (seen, job.log[-3000:])
  assert seen[-1]["steps_left"][-1] in (a - 1, a), seen

  # 2. SIGTERM after the first resumed step: checkpoint of the current step, exit status 0
  job = Job(workdir, "--config.checkpoint.every=100")  # no periodic saves: the one made is SIGTERM's
  resumed = seen[-1]["steps_left"][-1]
  logged = lambda: any(f"] [{resumed + 1}] train/" in l for l in list(job.lines))
  assert _wait_for(job, logged, "a resumed step"), job.log[-3000:]
  job.proc.send_signal(signal.SIGTERM)
  assert job.wait() == 0, job.log[-3000:]
  assert f"resuming from checkpoint step {resumed}" in job.log, job.log[-3000:]
  m = re.search(r"SIGTERM: checkpoint of step (\d+) written to (\S+); exiting", job.log)
  assert m, job.log[-3000:]
  term_step = int(m.group(1))
  assert resumed < term_step < TOTAL and _steps(ckdir)[-1] == term_step
  assert os.path.samefile(m.group(2), ckdir)
  step, state = _state(workdir)  # the SIGTERM checkpoint restores
  assert step == term_step and int(state["step"]) == term_step
  seen.append({"event": "sigterm", "step": term_step})

  # 3. SIGKILL at a random delay after step c's checkpoint is final
  c, delay = min(term_step + rng.randint(1, 2), TOTAL - 1), rng.uniform(0.0, 0.3)
  job = Job(workdir, "--config.checkpoint.every=1")
  seen.append(_kill_when(job, ckdir, "after_save", c, delay))
  assert seen[-1]["rc"] == -signal.SIGKILL, (seen, job.log[-3000:])
  assert f"resuming from checkpoint step {term_step}" in job.log, job.log[-3000:]

  # 4. to the end
  job = Job(workdir, "--config.checkpoint.every=1")
  assert job.wait() == 0, (seen, job.log[-3000:])
  assert f"resuming from checkpoint step {seen[-1]['steps_left'][-1]}" in job.log, seen
  step, state = _state(workdir)
  assert step == TOTAL
  _assert_same_state(ref_state, state)
  print("interruptions:", seen)


# ----------------------------------------------------------------------- damaged checkpoints
def _data_file(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "d", "*")) if os.path.isfile(f)]
  assert files, f"no data file in {step_dir}"
  return max(files, key=os.path.getsize)


def _half_written_tmp(ck):
  """What a kill in the middle of orbax's save leaves: the step under orbax's temporary name (which
  orbax ignores when restoring and replaces when it saves that step again)."""
  os.rename(os.path.join(ck, "6"), os.path.join(ck, "6.orbax-checkpoint-tmp"))


def _half_written_final(ck):
  """Written under the final name but incomplete (metadata and array store missing)."""
  os.remove(os.path.join(ck, "6", "state", "_METADATA"))
  shutil.rmtree(os.path.join(ck, "6", "state", "ocdbt.process_0"))


def _deleted_file(ck):
  os.remove(_data_file(os.path.join(ck, "6")))


def _garbage_bytes(ck):
  path = _data_file(os.path.join(ck, "6"))
  with open(path, "r+b") as f:
    f.write(np.random.default_rng(0).bytes(os.path.getsize(path)))


_NEEDS_SET_ASIDE = ("needs patch: TrainCheckpointer must move an unreadable step aside before the "
                    "resumed run saves that step again (orbax raises StepAlreadyExistsError)")


@pytest.mark.parametrize("damage", [
    pytest.param(_half_written_tmp, id="half_written_tmp_dir"),
    pytest.param(_half_written_final, id="half_written_final_dir"),
    pytest.param(_deleted_file, id="deleted_data_file"),
    pytest.param(_garbage_bytes, id="garbage_bytes_in_data_file"),
])
def test_damaged_latest_checkpoint_falls_back_and_finishes(reference, tmp_path, caplog, damage):
  ref_dir, ref_state = reference
  workdir = str(tmp_path / "damaged")
  shutil.copytree(ref_dir, workdir)
  ck = os.path.join(workdir, "checkpoints")
  assert _steps(ck) == [4, 5, 6]
  damage(ck)
  kept = [h for s in _steps(ck) for h in _hashes(os.path.join(ck, str(s)))]  # finalized steps
  caplog.set_level(logging.INFO)
  train.train_and_evaluate(_tiny(), workdir)
  log = caplog.text
  assert "resuming from checkpoint step 5" in log, log[-3000:]
  if damage is not _half_written_tmp:  # orbax ignores its own temporary directories
    assert re.search(r"checkpoint step 6 .* unreadable .*trying step 5", log), log[-3000:]
  missing = set(kept) - set(_hashes(ck))
  assert not missing, f"{len(missing)} files of finalized (or damaged) checkpoints were deleted"
  step, state = _state(workdir)
  assert step == TOTAL
  _assert_same_state(ref_state, state)


# --------------------------------------------------------------------------------- NaN skip
def test_nan_skip_policy_keeps_parameters_and_counts_skips(tmp_path, caplog):
  """Steps 3-4 with a NaN learning rate: both skipped (counted), the state stays step 2's."""
  workdir = str(tmp_path / "nan_skip")
  train.train_and_evaluate(tiny_config(total_steps=2, log_every=1), workdir)
  _, good = _state(workdir, 2)
  cfg = tiny_config(total_steps=4, log_every=1, nan_policy="skip")
  cfg.optimizer.learning_rate = float("nan")
  caplog.set_level(logging.INFO)
  train.train_and_evaluate(cfg, workdir)
  step, state = _state(workdir)
  assert step == 4 and int(state["step"]) == 4
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))
  for k in ("params", "model_state", "opt_state", "rng"):
    _assert_same_state(good[k], state[k])
  counts = [int(float(c)) for c in re.findall(r"train/skipped_steps=([0-9.]+)", caplog.text)]
  assert counts and counts[-1] == 2, caplog.text[-2000:]
