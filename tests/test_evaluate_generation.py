"""Generation evaluation (magplus_jax/evaluation/generation.py) on exact procedural micro clips."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from magplus_jax.evaluation import generation as eg
from magplus_jax.evaluation import face_metrics
from magplus_jax.models import magnifiers

SIZE, FRAMES, ALPHA = 64, 6, 3.0


def _load_config(name):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  argv = ["prog", f"--config={os.path.join(ROOT, 'configs', name)}"]
  saved, sys.argv = sys.argv, argv
  try:
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=False)
    fv(argv)
  finally:
    sys.argv = saved
  return fv.config


def _eval_config():
  config = _load_config("evaluate_generation.py")
  config.flow.update(dict(levels=2, iters=1, iters_finest=2))  # tiny_config's light flow
  config.backbone.image_size = SIZE
  config.generate.alpha = ALPHA
  config.generate.chunk = 4
  config.evaluate_generation.update(dict(
      num_clips=1, num_frames=FRAMES, faces=("astronaut",), micro_amplitude_px=(0.6, 0.8)))
  return config


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("evalgen"))
  lin = eg.LINEAR  # exact for small motion: a stand-in for a trained MagPlus
  methods = lambda alpha: {"magplus": (lin, lin),
                           "backbone": (magnifiers.IDENTITY, magnifiers.IDENTITY)}
  return eg.evaluate_generation(_eval_config(), workdir, methods_for=methods), workdir


def test_outputs_and_sane_values(evaluation):
  result, workdir = evaluation
  with open(os.path.join(workdir, "evaluate_generation.json")) as f:
    saved = json.load(f)
  assert saved["summary"] == result["summary"]
  table = open(os.path.join(workdir, "evaluate_generation.md")).read()
  for row in ("magplus", "backbone", "driver", "static"):
    assert f"| {row} |" in table, row
  (clip,) = saved["clips"]
  rows, info = clip["rows"], clip["clip"]
  assert info["alpha"] == ALPHA and info["face"] == "astronaut"
  assert "grace_hopper" in info["source"]
  # The warp backbone is the identity at rest: its rest frame is the source.
  assert info["rest_psnr"] > 60 and info["rest_ssim"] > 0.999
  mp, bb, drv = rows["magplus"], rows["backbone"], rows["driver"]
  # Measured on 4 clips (64 px, LK flow): MagPlus's driver moves 3.6-4.4x (alpha 4) the micro
  # driver, the backbone's output 2.5-5.8x; DeMagPlus brings it back by ~4x.
  assert ALPHA / 2 < mp["magnified_ratio"] < 2 * ALPHA, mp
  assert bb["magnified_ratio"] == 1.0 and bb["generated_ratio"] == bb["ratio_p95"]
  assert mp["generated_ratio"] > 2.0 * bb["generated_ratio"], (mp, bb)
  assert mp["generated_ratio"] > 1.5 * mp["ratio_p95"], mp
  for r in (mp, bb):
    assert 0.3 < r["ratio_p95"] < 3.0 and 0.3 < r["lm_ratio"] < 3.0, r
    assert r["corr"] > 0.9 and r["lm_corr"] > 0.5, r
    assert r["psnr"] > 30 and r["ssim"] > 0.9, r
  # The flow estimator's own landmark error on the driver is below the motion itself.
  assert drv["lm_err_px"] < info["amplitude_px"] and drv["lm_corr"] > 0.5
  assert rows["static"]["ratio_p95"] == 0.0 and np.isfinite(rows["static"]["psnr"])
  # The JAX-only identity proxy: the output looks like the source, the driver (another face) not.
  for r in (mp, bb):
    assert r["src_ssim"] > 0.8 > drv["src_ssim"], (r, drv)


def test_side_by_side_video_per_method(evaluation):
  """config.evaluate_generation.videos=1: clip 0 of each method as generate's panel."""
  from data_pipelines import video_io  # pylint: disable=g-import-not-at-top
  result, workdir = evaluation
  info = result["clips"][0]["clip"]
  assert sorted(info["videos"]) == ["evaluate_generation_clip0_backbone.mp4",
                                    "evaluate_generation_clip0_magplus.mp4"]
  frames, _ = video_io.read_video(os.path.join(workdir, info["videos"][0]))
  assert frames.shape == (FRAMES, SIZE, 5 * SIZE, 3)


def test_face_metrics_present_or_skipped_with_reason(evaluation):
  result, _ = evaluation
  face, why = face_metrics.load()
  rows = result["clips"][0]["rows"]
  if face is None:
    assert result["face_metrics"] == why and "not installed" in why
    assert "id_dist" not in rows["magplus"]
  else:
    assert result["face_metrics"] == "dlib"
    # The output keeps the source's identity; the driver is another person.
    assert rows["magplus"]["id_dist"] < rows["driver"]["id_dist"]


def test_without_face_models_the_table_says_so(evaluation, monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
  face_metrics.load.cache_clear()
  try:
    face, why = face_metrics.load()
  finally:
    face_metrics.load.cache_clear()
  assert face is None and "dlib is not installed" in why and "pip install" in why
  result = dict(evaluation[0], face_metrics=why)
  eg.write_results(str(tmp_path), "t", result)
  text = (tmp_path / "t.md").read_text()
  assert "Face models unavailable (dlib is not installed" in text
  assert "src_ssim is the JAX-only identity proxy" in text


def test_exact_motion_helpers():
  rng = np.random.default_rng(0)
  rest = rng.uniform(0, 1, (16, 16, 3)).astype(np.float32)
  flows = np.zeros((3, 16, 16, 2), np.float32)
  flows[1] = (1.0, 0.0)   # everything moves one pixel right
  flows[2, ..., 1] = -2.0  # two pixels up
  ideal = np.asarray(eg.ideal_frames(jnp.asarray(rest), jnp.asarray(flows)))
  np.testing.assert_allclose(ideal[0], rest, atol=1e-6)
  np.testing.assert_allclose(ideal[1][:, 1:], rest[:, :-1], atol=1e-5)
  np.testing.assert_allclose(ideal[2][:-2], rest[2:], atol=1e-5)
  pts = np.array([[3.5, 4.0], [10.0, 12.25]], np.float32)
  np.testing.assert_allclose(eg.sample_at(flows, pts)[2], [[0.0, -2.0], [0.0, -2.0]], atol=1e-6)
  exact = rng.normal(size=(5, 3, 2))
  exact[0] = 0
  perfect = eg.landmark_scores(exact, exact, exact)
  assert perfect["lm_err_px"] == 0 and perfect["lm_gain"] == pytest.approx(1.0)
  assert perfect["lm_corr"] == pytest.approx(1.0) and perfect["lm_ratio"] == pytest.approx(1.0)
  half = eg.landmark_scores(0.5 * exact, exact, exact)
  assert half["lm_gain"] == pytest.approx(0.5) and half["lm_ratio"] == pytest.approx(0.5)
  assert eg.pearson([1, 1, 1], [1, 2, 3]) is None


def test_summary_skips_missing_values():
  per_clip = [{"rows": {"a": {"x": 1.0, "y": None}}}, {"rows": {"a": {"x": 3.0, "y": 2.0}}}]
  assert eg.summarize(per_clip) == {"a": {"x": 2.0, "y": 2.0, "n": 2}}


def test_config_errors_name_the_field():
  config = _eval_config()
  config.evaluate_generation.methods = ("magplus", "nope")
  with pytest.raises(ValueError, match="evaluate_generation.methods"):
    eg.validate(config)
  config = _eval_config()
  config.evaluate_generation.source = "/no/such/face.png"
  with pytest.raises(FileNotFoundError, match="source"):
    eg.validate(config)


def test_cli_reports_bad_config_in_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "magplus_jax.evaluation.generation",
       f"--config={ROOT}/configs/evaluate_generation.py", f"--workdir={tmp_path}",
       "--config.evaluate_generation.num_frames=2"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last == ("magplus_jax: error: config.evaluate_generation.num_frames=2: must be >= 4 "
                  "(onset, apex, offset)"), proc.stderr[-2000:]


def test_dlib_face_metrics_when_installed():
  pytest.importorskip("dlib")
  from data_pipelines import face_crop, images  # pylint: disable=g-import-not-at-top
  face, why = face_metrics.load()
  if face is None:
    pytest.skip(why)
  grace, _ = face_crop.crop_image(images.grace_hopper(), SIZE)
  astro, _ = face_crop.crop_image(images.astronaut(), SIZE)
  lm = face.landmarks(np.stack([grace, grace]))
  assert lm.shape == (2, 68, 2) and np.all((lm > -1) & (lm < SIZE))
  np.testing.assert_allclose(face_metrics.landmark_motion(lm), [0.0, 0.0], atol=1e-9)
  np.testing.assert_allclose(face_metrics.identity_distance(face, grace[None], grace), [0.0],
                             atol=1e-6)
  # another person
  assert face_metrics.identity_distance(face, astro[None], grace)[0] > face_metrics.SAME_PERSON_DISTANCE
