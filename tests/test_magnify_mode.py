"""`magnify` mode (magplus_jax/magnify.py): a user's clip in, the magnified clip and its records out."""
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from conftest import ROOT
from data_pipelines import micro_clips, video_io
from magplus_jax import magnify

OUTPUTS = ("magnified.mp4", "magnified.npy", "side_by_side.mp4", "intensity.png", "magnify.json")


def _config(**kw):
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  try:
    import magnify as magnify_config  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  config = magnify_config.get_config()
  config.chunk = 4
  for k, v in kw.items():
    config[k] = v
  return config


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
  """A procedural micro-expression clip of 6 frames at 44 x 60 px (not a multiple of the network's
  8) as a folder of PNGs: lossless, so the mode's input is known exactly."""
  clip = micro_clips.make_clip({"image_size": 64, "num_frames": 6, "faces": ("astronaut",),
                                "micro_amplitude_px": (0.5, 0.6)}, seed=1)
  d = tmp_path_factory.mktemp("clip")
  for i, f in enumerate(clip.frames):
    video_io.write_image(str(d / f"{i:03d}.png"), f[10:54, 2:62])
  return str(d)


def _read_input(path):
  return video_io.read_video(path)[0]


def test_magplus_writes_everything_and_is_exact_at_alpha_one(frames_dir, tmp_path):
  frames = _read_input(frames_dir)
  out = str(tmp_path / "one")
  summary = magnify.magnify(_config(input=frames_dir, alpha=1.0), out)
  for name in OUTPUTS:
    assert os.path.getsize(os.path.join(out, name)) > 100, name
  result = np.load(os.path.join(out, "magnified.npy"))
  assert result.dtype == np.float32 and result.shape == frames.shape == (6, 44, 60, 3)
  np.testing.assert_array_equal(result, frames)  # alpha 1 is the identity, pixel for pixel
  assert summary["weights"].startswith("magplus: the shipped weights")
  with open(os.path.join(out, "magnify.json")) as f:
    saved = json.load(f)
  assert saved["alpha"] == 1.0 and saved["frames"] == 6 and saved["width"] == 60


def test_magnified_motion_grows_and_frame_zero_is_kept(frames_dir, tmp_path):
  frames = _read_input(frames_dir)
  s = magnify.magnify(_config(input=frames_dir, alpha=8.0), str(tmp_path / "eight"))
  result = np.load(tmp_path / "eight" / "magnified.npy")
  np.testing.assert_array_equal(result[0], frames[0])
  # Output motion ~ 8 x the input's as the weight-free flow measures it (peak 95th percentile).
  assert 4.0 < s["measured_ratio"] < 12.0, s["peak_p95_px"]


def test_classical_magnifier_by_name_and_moving_reference(frames_dir, tmp_path):
  s = magnify.magnify(_config(input=frames_dir, alpha=8.0, magnifier="eulerian",
                              reference="moving", reference_window=3), str(tmp_path / "eul"))
  assert s["magnifier"] == "eulerian" and s["weights"] == "eulerian"
  assert np.load(tmp_path / "eul" / "magnified.npy").shape == (6, 44, 60, 3)


def test_black_mask_leaves_the_clip_unchanged(frames_dir, tmp_path):
  mask = str(tmp_path / "mask.png")
  video_io.write_image(mask, np.zeros((10, 10, 3), np.float32))
  magnify.magnify(_config(input=frames_dir, alpha=8.0, mask=mask), str(tmp_path / "masked"))
  np.testing.assert_array_equal(np.load(tmp_path / "masked" / "magnified.npy"),
                                _read_input(frames_dir))


def test_bad_inputs_fail_before_writing(frames_dir, tmp_path):
  out = tmp_path / "bad"
  for kw, match in ((dict(input=str(tmp_path / "none.mp4")), "none.mp4"),
                    (dict(input=frames_dir, alpha=-2.0), "config.alpha=-2.0"),
                    (dict(input=frames_dir, magnifier="fancy"), "config.magnifier='fancy'"),
                    (dict(input=frames_dir, reference="last"), "config.reference='last'")):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
      magnify.magnify(_config(**kw), str(out))
    assert not out.exists()


def test_cli_one_line_error_keeps_earlier_results(frames_dir, tmp_path):
  out = tmp_path / "cli"
  out.mkdir()
  (out / "magnified.npy").write_bytes(b"earlier result")
  proc = subprocess.run(
      [sys.executable, "-m", "magplus_jax.main", f"--config={ROOT}/configs/magnify.py",
       f"--workdir={out}", f"--config.input={tmp_path / 'missing.mp4'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("magplus_jax: ") and "missing.mp4" in last, last
  assert (out / "magnified.npy").read_bytes() == b"earlier result"
