"""The trainer: a smoke run, exact resume, resume on another mesh, NaN guard, checkpoint fallback."""
import glob
import os

import jax
import numpy as np
import pytest

from conftest import tiny_config
from magplus_jax import checkpointing, train




@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full"))
  metrics = train.train_and_evaluate(tiny_config(eval_every=4), workdir)
  return workdir, metrics


def test_smoke_writes_checkpoints_summaries_and_config(full_run):
  workdir, metrics = full_run
  step, state = checkpointing.restore_latest_training_state(workdir)
  assert step == 4 and int(state["step"]) == 4
  assert os.path.isfile(os.path.join(workdir, "config.json"))
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  assert os.path.isfile(os.path.join(workdir, "calibration.json"))
  for k in ("motion_error", "mag_error", "psnr", "ssim", "target_motion"):
    assert np.isfinite(metrics[k]), k
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))


def test_resume_is_bit_identical(full_run, tmp_path):
  """4 steps == 2 steps, stop, restore (params, opt state, rng, data iterator), 2 more steps."""
  full_dir, _ = full_run
  workdir = str(tmp_path / "split")
  train.train_and_evaluate(tiny_config(eval_every=4, stop_after_steps=2), workdir)
  assert checkpointing.restore_latest_training_state(workdir)[0] == 2
  train.train_and_evaluate(tiny_config(eval_every=4), workdir)
  _, a = checkpointing.restore_latest_training_state(full_dir)
  _, b = checkpointing.restore_latest_training_state(workdir)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_resume_on_another_mesh(full_run, tmp_path):
  """A checkpoint written on 8 data-parallel devices restores onto a 1-device... and a 2x4 mesh."""
  full_dir, _ = full_run
  workdir = str(tmp_path / "remesh")
  train.train_and_evaluate(tiny_config(stop_after_steps=2), workdir)
  cfg = tiny_config(stop_after_steps=3, mesh=(("data", 2), ("fsdp", 4), ("model", 1)),
                    sharding_rules=((".*kernel", "fsdp"), (".*", "replicate")))
  train.train_and_evaluate(cfg, workdir)
  assert checkpointing.restore_latest_training_state(workdir)[0] == 3


def test_nan_stop_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "nan")
  train.train_and_evaluate(tiny_config(total_steps=2), workdir)
  cfg = tiny_config(total_steps=4)
  cfg.optimizer.learning_rate = float("nan")
  with pytest.raises(FloatingPointError, match="non-finite .* step 3.*step 2"):
    train.train_and_evaluate(cfg, workdir)
  step, state = checkpointing.restore_latest_training_state(workdir)
  assert step == 2
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))


def test_corrupt_latest_checkpoint_falls_back(full_run, tmp_path, caplog):
  import shutil  # pylint: disable=g-import-not-at-top
  src, _ = full_run
  workdir = str(tmp_path / "corrupt")
  shutil.copytree(src, workdir)
  ckdir = os.path.join(workdir, "checkpoints")
  latest = os.path.join(ckdir, "4", "state")
  for f in glob.glob(os.path.join(latest, "**", "*"), recursive=True):
    if os.path.isfile(f) and "manifest" in f:
      with open(f, "wb") as fh:
        fh.write(b"garbage")
  ck = checkpointing.TrainCheckpointer(ckdir, async_save=False)
  trainer = train.build_trainer(tiny_config(), train.sharding.make_mesh(tiny_config().mesh))
  messages = []
  step, state, _ = ck.restore_latest(trainer.abstract_state, None, log=messages.append)
  ck.close()
  assert step == 2 and "step 4" in messages[0] and "unreadable" in messages[0]
  assert os.path.isdir(os.path.join(ckdir, "4"))  # nothing deleted
