"""Malformed inputs through the real entry points: one clear line, non-zero exit, workdir intact.

The corpus (tests/malformed_corpus.py) is built in tmp and run by one driver subprocess that calls
the CLI entries in-process (imports paid once); `test_driver_matches_real_cli` checks that driver
against real `python -m` runs. Each case must end with exactly one line `magplus_jax...: ...` naming
the input and the problem, the expected exit status (2: command line, 1: the job), no traceback,
nothing in stderr but that line and absl log lines, and the pre-populated work directory (an
earlier result.mp4, config.json, checkpoint, sentinel) byte-identical, nothing added.
Valid-but-unusual images (grey, grey+alpha, RGBA, 16-bit PNG and TIFF) must load.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import malformed_corpus as mc

LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")
ERROR_PREFIX = "magplus_jax"


def loud_tensorflow_env() -> dict:
  """The environment of a shell that asks TensorFlow for every C++ log line and for its oneDNN
  paths (as TensorFlow picks them itself on AVX-512/AMX CPUs): the CLI must still print one line,
  whatever pytest's own environment (tests/conftest.py quiets TensorFlow) or the CPU."""
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", TF_ENABLE_ONEDNN_OPTS="1")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  base = tmp_path_factory.mktemp("malformed")
  root, out = str(base / "corpus"), str(base / "results.json")
  proc = subprocess.run([sys.executable, mc.__file__, root, out], capture_output=True, text=True,
                        timeout=1200, cwd=mc.ROOT_DIR, env=loud_tensorflow_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out) as f:
    return root, json.load(f)


def error_lines(stderr: str) -> list:
  return [l for l in stderr.splitlines() if l.startswith(ERROR_PREFIX)]


def check_case(case: mc.Case, res: dict) -> None:
  assert res["status"] != mc.TRIPWIRE_STATUS, "training started before the inputs were validated"
  assert "Traceback" not in res["stderr"], res["stderr"][-2000:]
  errors = error_lines(res["stderr"])
  assert len(errors) == 1, res["stderr"][-2000:]
  line = errors[0]
  others = [l for l in res["stderr"].splitlines()
            if l.strip() and l != line and not LOG_LINE.match(l)]
  assert not others, f"stray stderr lines: {others}"
  for word in case.expect:
    assert word.lower() in line.lower(), f"{word!r} not in {line!r}"
  assert res["status"] == case.status, line
  assert not res["changed"] and not res["deleted"], (res["changed"], res["deleted"])
  assert not res["new"], f"the failed run wrote {res['new']}"


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)]
                          if c.xfail else []) for c in mc.CASES])
def test_malformed_input(corpus, case):
  _, results = corpus
  res = results[case.id]
  if "skipped" in res:
    pytest.skip(res["skipped"])
  check_case(case, res)


def test_corpus_is_large_and_covers_every_kind():
  kinds = {c.id.split("_")[0] for c in mc.CASES}
  assert len(mc.CASES) >= 30
  assert {"video", "folder", "image", "config", "alpha", "backbone", "magnifier", "raft",
          "fomm"} <= kinds
  assert len({c.id for c in mc.CASES}) == len(mc.CASES)


def test_driver_matches_real_cli(corpus):
  """The in-process driver reports what a real `python -m magplus_jax.main` process does."""
  root, results = corpus
  by_id = {c.id: c for c in mc.CASES}
  for cid in ("video_empty_file", "config_unknown_key_close_match"):
    case = by_id[cid]
    workdir = os.path.join(root, "real_cli", cid)
    mc.populate_workdir(workdir, root)
    argv = [a.replace("{R}", root).replace("{W}", workdir) for a in case.args]
    proc = subprocess.run([sys.executable, "-m", "magplus_jax.main"] + argv, capture_output=True,
                          text=True, timeout=600, cwd=mc.ROOT_DIR, env=loud_tensorflow_env())
    assert proc.returncode == results[cid]["status"], proc.stderr[-2000:]
    assert error_lines(proc.stderr) == error_lines(results[cid]["stderr"])


# ------------------------------------------------------------------- valid but unusual images
def _valid_images(rng):
  """name -> (array as stored, expected float RGB)."""
  g8 = rng.integers(0, 256, (32, 32), dtype=np.uint8)
  rgb8 = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  g16 = rng.integers(0, 65536, (32, 32), dtype=np.uint16)
  rgb16 = rng.integers(0, 65536, (32, 32, 3), dtype=np.uint16)
  a8 = rng.integers(0, 256, (32, 32, 1), dtype=np.uint8)
  a16 = rng.integers(0, 65536, (32, 32, 1), dtype=np.uint16)
  rep = lambda x: np.repeat(x[..., None], 3, -1)
  return {
      "grey8.png": (g8, rep(g8 / 255.0)),
      "grey_alpha8.png": (np.concatenate([g8[..., None], a8], -1), rep(g8 / 255.0)),
      "rgba8.png": (np.concatenate([rgb8, a8], -1), rgb8 / 255.0),
      "grey16.png": (g16, rep(g16 / 65535.0)),
      "rgb16.png": (rgb16, rgb16 / 65535.0),
      "rgba16.png": (np.concatenate([rgb16, a16], -1), rgb16 / 65535.0),
      "rgb16.tif": (rgb16, rgb16 / 65535.0),
  }


@pytest.mark.filterwarnings("ignore:no face found")
@pytest.mark.parametrize("name", list(_valid_images(np.random.default_rng(0))))
def test_valid_unusual_images_load_in_the_generation_pipeline(tmp_path, name):
  """Grey, grey+alpha, RGBA and 16-bit sources and frame folders are inputs, not errors."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from magplus_jax import generate  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "generate_config", os.path.join(mc.ROOT_DIR, "configs", "generate.py"))
  gen_config = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(gen_config)
  images = _valid_images(np.random.default_rng(0))
  stored, expected = images[name]

  def write(path, arr):
    if path.endswith(".tif"):
      import tifffile  # pylint: disable=g-import-not-at-top
      tifffile.imwrite(path, arr)
    else:
      with open(path, "wb") as f:
        f.write(mc.png_bytes(arr))
  source = str(tmp_path / name)
  write(source, stored)
  os.makedirs(tmp_path / "driving")
  for i in range(3):
    write(str(tmp_path / "driving" / f"{i}_{name}"), np.roll(stored, i, axis=1))
  config = gen_config.get_config()
  config.source, config.driving = source, str(tmp_path / "driving")
  config.generate.crop = False
  src, drv, fps, _ = generate.load_inputs(config, 32)
  assert src.shape == (32, 32, 3) and src.dtype == np.float32
  assert drv.shape == (3, 32, 32, 3) and fps > 0
  np.testing.assert_allclose(src, expected, atol=1e-6)
  np.testing.assert_allclose(drv[2], np.roll(expected, 2, axis=1), atol=1e-6)
  config.generate.crop = True  # the default path: face crop (a centre crop here) and resize
  src, drv, _, _ = generate.load_inputs(config, 16)
  assert src.shape == (16, 16, 3) and drv.shape == (3, 16, 16, 3)
  assert np.all(np.isfinite(src)) and 0.0 <= src.min() and src.max() <= 1.0
