"""The generation pipeline: the micro -> macro -> micro motion path, and the CLI's outputs."""
import json
import os
import shutil

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from data_pipelines import face_crop, images, micro_clips
from magplus_jax import calibration, config_lib, generate, pretrained
from magplus_jax.evaluation import metrics
from magplus_jax.models import magnifiers
from magplus_jax.models.backbones import get_backbone
from magplus_jax.models.flow import get_flow

SIZE = 64


@pytest.fixture(scope="module")
def clip_and_source():
  clip = micro_clips.make_clip({"image_size": SIZE, "num_frames": 8, "faces": ("astronaut",),
                                "micro_amplitude_px": (0.6, 0.8)}, seed=3)
  source, _ = face_crop.crop_image(images.grace_hopper(), SIZE)
  return clip, source.astype(np.float32)


def _linear_magnifier():
  """Exact-for-small-motion stand-in for a trained MagPlus: I0 + alpha (I_t - I0)."""
  def fn(params, frames, alpha):
    a = magnifiers.broadcast_alpha(alpha, frames)
    return jnp.clip(frames[:, :1] + a * (frames - frames[:, :1]), 0.0, 1.0)
  return magnifiers.Magnifier("linear", {}, fn)


def test_pipeline_magnifies_then_restores(clip_and_source):
  clip, source = clip_and_source
  flow = get_flow(ml_collections.ConfigDict(dict(name="pyramid_lk")))
  backbone = get_backbone(ml_collections.ConfigDict(dict(name="warp", image_size=SIZE)), flow)
  mag = _linear_magnifier()
  alpha = 3.0
  clips = generate.run_pipeline(source, clip.frames, alpha, mag, backbone, mag, chunk=4)
  assert {k: v.shape for k, v in clips.items()} == {k: clip.frames.shape for k in clips}
  peak = {k: calibration.clip_motion(calibration.clip_flows(flow, jnp.asarray(v)))
          for k, v in clips.items()}
  # micro -> macro: the magnified driver moves about alpha times as much as the driver ...
  assert 2.0 < peak["magnified"] / peak["driver"] < 4.0, peak
  # ... the backbone transfers that motion to the source face, and DeMagPlus brings it back.
  assert peak["generated"] > 1.8 * peak["output"], peak
  assert 0.5 < peak["output"] / peak["driver"] < 1.6, peak
  # frame 0 of the output is the backbone's frame 0 (relative motion starts at rest)
  np.testing.assert_allclose(clips["output"][0], clips["generated"][0], atol=1e-6)


def test_attenuate_scales_the_output_motion_down(clip_and_source):
  """The macro -> micro direction: alpha 1 (MagPlus the identity), DeMagPlus at 1/attenuate."""
  clip, source = clip_and_source
  flow = get_flow(ml_collections.ConfigDict(dict(name="pyramid_lk")))
  backbone = get_backbone(ml_collections.ConfigDict(dict(name="warp", image_size=SIZE)), flow)
  mag = _linear_magnifier()
  clips = generate.run_pipeline(source, clip.frames, 1.0, mag, backbone, mag, chunk=4,
                                attenuate=4.0)
  np.testing.assert_array_equal(clips["magnified"], clip.frames)  # alpha 1: the driver itself
  peak = {k: calibration.clip_motion(calibration.clip_flows(flow, jnp.asarray(v)))
          for k, v in clips.items()}
  # linear attenuation of the backbone's output to a quarter of its motion (0.6-0.8 px apex)
  assert 0.15 < peak["output"] / peak["generated"] < 0.4, peak


def test_calibrated_alpha_reaches_target(clip_and_source):
  clip, _ = clip_and_source
  flow = get_flow(ml_collections.ConfigDict(dict(name="pyramid_lk")))
  motion = calibration.clip_motion(calibration.clip_flows(flow, jnp.asarray(clip.frames)))
  alpha = calibration.choose_alpha(motion, target=4.0, alpha_max=16.0)
  assert 1.0 <= alpha <= 16.0
  assert alpha == pytest.approx(4.0 / motion, rel=1e-6) or alpha in (1.0, 16.0)
  assert calibration.choose_alpha(0.0, 4.0, 16.0) == 16.0
  with pytest.raises(ValueError, match="target"):
    calibration.choose_alpha(1.0, -1.0, 16.0)


def test_generate_embedded_default_outputs(tmp_path):
  """The CLI path on the embedded default: the shipped MagPlus / DeMagPlus, nothing trained."""
  config = tiny_config(mode="generate")
  config.model = config_lib.base_config().model  # the shipped architecture
  config.source, config.driving = "", ""
  config.backbone = ml_collections.ConfigDict(dict(name="warp", image_size=SIZE))
  config.generate = ml_collections.ConfigDict(dict(
      alpha=0.0, motion_target=0.0, max_repeats=1, chunk=4, crop=True, max_frames=300,
      default_num_frames=6, magplus_checkpoint="", demag_checkpoint=""))
  workdir = str(tmp_path / "gen")
  summary = generate.generate(config, workdir)
  for name in ("result.mp4", "side_by_side.mp4", "side_by_side.gif", "intensity.png",
               "generate.json"):
    assert os.path.isfile(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, "generate.json")) as f:
    saved = json.load(f)
  assert saved["alpha"] == summary["alpha"] and 1.0 <= saved["alpha"] <= pretrained.alpha_max()
  assert set(saved["intensity"]) == {"driver", "magnified", "generated", "output"}
  assert len(saved["intensity"]["output"]["p95_px"]) == 6
  assert saved["magnifiers"].count("the shipped weights") == 2, saved["magnifiers"]
  # Checkpoints in the workdir take precedence over the shipped ones, and the summary says so.
  shutil.copytree(pretrained.path("magplus"), os.path.join(workdir, "magplus"))
  again = generate.generate(config, workdir)
  assert f"magplus: the checkpoint in {workdir}/magplus" in again["magnifiers"]
  # Another architecture with no checkpoint of its own is refused before any work, naming it.
  config.model.width = 8
  with pytest.raises(ValueError, match="model.width=8 .shipped: 16."):
    generate.generate(config, str(tmp_path / "other"))
  assert not os.path.exists(tmp_path / "other")
