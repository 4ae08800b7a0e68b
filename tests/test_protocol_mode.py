"""The synthetic-protocol command (magplus_jax/evaluation/protocol_mode.py, configs/protocol.py)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from magplus_jax import config_lib, pretrained
from magplus_jax.evaluation import protocol_mode
from magplus_jax.models import magnifier as magnifier_lib


def _protocol_config():
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  try:
    import protocol as protocol_config  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  config = protocol_config.get_config()
  config.model = tiny_config().model
  return config


def test_magnifiers_and_checkpoint_lookup(tmp_path):
  config = _protocol_config()
  mags, skipped, ckpt = protocol_mode.build_magnifiers(config, str(tmp_path))
  assert list(mags) == ["identity", "eulerian", "phase", "phase_yiq", "untrained"]
  # config.model is not the shipped network's and no checkpoint is given: skipped, saying why.
  assert ckpt == "" and len(skipped) == 1
  assert skipped[0].startswith("magplus: no magplus checkpoint given and config.model differs")
  # A training workdir (or a generate workdir's magplus/) is found without being named.
  os.makedirs(tmp_path / "magplus" / "checkpoints" / "200")
  found = protocol_mode.find_checkpoint(config, str(tmp_path))[0]
  assert found.checkpoint == str(tmp_path / "magplus")
  config.protocol.checkpoint = "/given"
  assert protocol_mode.find_checkpoint(config, str(tmp_path))[0].checkpoint == "/given"
  # With the shipped architecture and nothing given: the shipped weights, one application.
  config = _protocol_config()
  config.model = config_lib.base_config().model
  found = protocol_mode.find_checkpoint(config, str(tmp_path / "empty"))[0]
  assert found.checkpoint == pretrained.path("magplus") and found.max_repeats == 1
  config = _protocol_config()
  config.protocol.magnifiers = ("identity", "warp")
  with pytest.raises(ValueError, match="protocol.magnifiers"):
    protocol_mode.build_magnifiers(config)
  config = _protocol_config()
  config.protocol.tests = ("subpixel", "blur")
  with pytest.raises(ValueError, match="protocol.tests"):
    protocol_mode.protocol(config, str(tmp_path))
  config = _protocol_config()
  config.protocol.image_size = 20
  with pytest.raises(ValueError, match="config.protocol: protocol image_size 20"):
    protocol_mode.protocol(config, str(tmp_path))


def test_network_repeats_follow_alpha():
  """alpha <= alpha_max: one application at alpha; above: two at sqrt(alpha), as generate does."""
  config = _protocol_config()
  config.data.alpha_max = 4.0
  config.protocol.max_repeats = 2
  net = protocol_mode._network(config, "", "net")  # pylint: disable=protected-access
  # Perturb the zero-initialised head so the network is not the identity.
  leaves, tree = jax.tree.flatten(net.params)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
                                     if jnp.issubdtype(x.dtype, jnp.floating) else x
                                     for x, k in zip(leaves, keys)])
  frames = jnp.asarray(np.random.default_rng(0).uniform(0.2, 0.8, (2, 2, 16, 16, 3)), jnp.float32)
  fn = jax.jit(net.magnify_clip)
  for alpha, k in ((3.0, 1), (9.0, 2), (50.0, 2)):
    cfg = ml_collections.ConfigDict(dict(model=config.model.to_dict(), seed=config.seed, repeats=k))
    ref = jax.jit(magnifier_lib.build(cfg).magnify_clip)(params, frames, jnp.full((2,), alpha))
    out = fn(params, frames, jnp.full((2,), alpha))
    np.testing.assert_allclose(out, ref, atol=2e-5, err_msg=f"alpha {alpha}")
  # ... and two applications differ from one at the full alpha.
  cfg = ml_collections.ConfigDict(dict(model=config.model.to_dict(), seed=config.seed, repeats=1))
  single = jax.jit(magnifier_lib.build(cfg).magnify_clip)(params, frames, jnp.full((2,), 9.0))
  assert np.abs(fn(params, frames, jnp.full((2,), 9.0)) - single).max() > 1e-3


def test_command_writes_tables_and_curves(tmp_path):
  m = tiny_config().model
  proc = subprocess.run(
      [sys.executable, "-m", "magplus_jax.evaluation.protocol_mode", f"--config={ROOT}/configs/protocol.py",
       f"--workdir={tmp_path}", f"--config.model.levels={m.levels}",
       f"--config.model.width={m.width}", "--config.model.output=alpha_residual",
       "--config.protocol.magnifiers=('identity','magplus','untrained')",
       "--config.protocol.image_size=40", "--config.protocol.num_pairs=2",
       "--config.protocol.batch_size=2", "--config.protocol.magnified_px=3.0",
       "--config.protocol.motions=(0.1,0.5)", "--config.protocol.noise_stds=(0.01,30.0)",
       "--config.protocol.noise_alpha=60.0"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("synthetic_protocol.md", "synthetic_protocol.json", "synthetic_protocol_subpixel.png",
               "synthetic_protocol_noise.png"):
    assert os.path.getsize(tmp_path / name) > 100, name
  with open(tmp_path / "synthetic_protocol.json") as f:
    results = json.load(f)
  assert results["magnifiers"] == ["identity", "untrained"]
  assert results["skipped"][0].startswith("magplus: no magplus checkpoint given")
  assert results["subpixel"]["x"] == [0.1, 0.5] and results["subpixel"]["alpha"] == [30.0, 6.0]
  assert results["noise"]["alpha"] == [60.0, 60.0]
  for sweep in (results["subpixel"], results["noise"]):
    assert all(0.0 < v < 1.0 for v in sweep["input"]), sweep
    np.testing.assert_allclose(sweep["identity"], sweep["input"], atol=1e-6)
    # An untrained "alpha_residual" U-Net is the exact identity magnifier (zero-initialised head).
    np.testing.assert_allclose(sweep["untrained"], sweep["input"], atol=1e-4)
  # Heavy noise lowers the input's SSIM against the clean truth.
  assert results["noise"]["input"][1] < results["noise"]["input"][0]
  table = (tmp_path / "synthetic_protocol.md").read_text()
  assert "### Sub-pixel test" in table and "### Noise test" in table
  assert "| 0.1 | 30 |" in table and "Not scored: magplus" in table


def test_command_bad_config_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "magplus_jax.evaluation.protocol_mode", f"--config={ROOT}/configs/protocol.py",
       f"--workdir={tmp_path}", "--config.protocol.magnifiers=('identity','warp')"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("magplus_jax: error: config.protocol.magnifiers=('identity', 'warp')"), last
  assert not os.listdir(tmp_path)


def test_shipped_magplus_protocol_smoke(tmp_path):
  """The protocol with the shipped MagPlus (no checkpoint given), 2 pairs per point at 64 px: it
  must beat doing nothing and the phase-based method where the motion is measurable."""
  config = _protocol_config()
  config.model = config_lib.base_config().model
  config.protocol.update(dict(magnifiers=("identity", "phase_yiq", "magplus"), num_pairs=2,
                              batch_size=2, motions=(0.04, 1.0), noise_stds=(1.0,)))
  results = protocol_mode.protocol(config, str(tmp_path))
  assert results["checkpoint"] == pretrained.path("magplus") and not results["skipped"]
  for sweep in (results["subpixel"], results["noise"]):
    for i in range(len(sweep["x"])):
      assert sweep["magplus"][i] > sweep["phase_yiq"][i] > sweep["identity"][i], sweep
