"""Test setup: 8 fake CPU devices (sharding tests), CPU only, before jax is imported anywhere."""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# Compiled executables are reused across tests and runs (many tests build the same small trainer).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")


def tiny_config(**overrides):
  """The smallest real training config: 32x32 pairs, 2-level width-8 U-Net, a light pyramid_lk."""
  from magplus_jax import config_lib  # pylint: disable=g-import-not-at-top
  c = _tiny_run(config_lib.base_config(), steps=4, log_every=2, eval_every=0, checkpoint_every=2)
  c.model.levels = 2
  c.model.width = 8
  c.flow.update(dict(levels=2, iters=1, iters_finest=2))
  return _override(c, overrides)


def tiny_fomm_config(**overrides):
  """The smallest real FOMM training config (config.task="fomm"): 32x32 procedural pairs,
  4 keypoints, widths 8 -> 32, one bottleneck block; the loss terms and transform as configured
  by configs/fomm_small.py (the official weights)."""
  from magplus_jax import config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.task = "fomm"
  c.fomm = config_lib.fomm_config()
  mp = c.fomm.model_params
  mp.common_params.num_kp = 4
  mp.kp_detector_params.update(dict(block_expansion=8, max_features=32, num_blocks=3))
  mp.generator_params.update(dict(block_expansion=8, max_features=32, num_bottleneck_blocks=1))
  mp.generator_params.dense_motion_params.update(dict(block_expansion=8, max_features=32,
                                                      num_blocks=3))
  c.fomm.data.mixture = "procedural:1"
  return _override(_tiny_run(c, steps=2, log_every=1, eval_every=2, checkpoint_every=1), overrides)


def _tiny_run(c, *, steps, log_every, eval_every, checkpoint_every):
  """What every tiny run shares: 32x32 data, a batch the 8 fake devices split, 8 eval examples,
  a constant learning rate and synchronous checkpoints (a test reads them right after)."""
  c.total_steps = steps
  c.batch_size = 8
  c.data.image_size = 32
  c.data.num_eval_examples = 8
  c.optimizer.schedule = "constant"
  c.log_every = log_every
  c.eval_every = eval_every
  c.checkpoint.every = checkpoint_every
  c.checkpoint.async_save = False
  return c


def _override(c, overrides):
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


# Test files written in session 1 whose code was still being finished when the session ended: they
# are collected and reported as skipped (never silently passed) until a session validates them on
# a quiet machine and removes them from this list. See the closing notes of the issues named.
UNVALIDATED = {
}


def pytest_collection_modifyitems(config, items):
  import pytest  # pylint: disable=g-import-not-at-top
  if os.environ.get("MAGPLUS_RUN_UNVALIDATED"):  # set while a session validates these files
    return
  for item in items:
    reason = UNVALIDATED.get(os.path.basename(str(item.fspath)))
    if reason:
      item.add_marker(pytest.mark.skip(reason=f"not yet validated: {reason}"))
