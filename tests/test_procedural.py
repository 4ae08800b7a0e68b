"""The procedural data set: determinism, disjoint splits, exact flow geometry, amplitude control."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines import images, procedural as P
from magplus_jax.models import resample

jax.config.update("jax_default_matmul_precision", "highest")


def _warp(img, flow):
  return np.asarray(resample.warp(jnp.asarray(img)[None], jnp.asarray(flow)[None]))[0]


def _random_field(rng, n, spec, alpha, amp):
  unit = P.make_fold_free(P.sample_unit_field(rng, n, spec), n, max(alpha, 1.0) * amp,
                          spec.fold_limit)
  return unit.scaled(amp)


def test_format_and_ranges():
  spec = P.ProceduralSpec(image_size=32)
  ex = P.generate_example(spec, "train", 0, 7)
  for k in ("ref", "frame", "magnified"):
    assert ex[k].shape == (32, 32, 3) and ex[k].dtype == np.float32
    assert ex[k].min() >= 0.0 and ex[k].max() <= 1.0
  assert ex["flow"].shape == (32, 32, 2) and ex["flow"].dtype == np.float32
  assert ex["alpha"].dtype == np.float32 and ex["alpha"].shape == ()
  assert ex["index"] == 7


def test_deterministic_from_seed_and_index():
  spec = P.ProceduralSpec(image_size=32)
  a = P.generate_example(spec, "train", 5, 11)
  b = P.generate_example(spec, "train", 5, 11)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  c = P.generate_example(spec, "train", 5, 12)
  d = P.generate_example(spec, "train", 6, 11)
  assert not np.array_equal(a["ref"], c["ref"])
  assert not np.array_equal(a["ref"], d["ref"])


def test_splits_disjoint_by_source_and_stream():
  assert not set(images.face_keys("train")) & set(images.face_keys("test"))
  assert not set(images.texture_keys("train")) & set(images.texture_keys("test"))
  spec = P.ProceduralSpec(image_size=32)
  for split, other in (("train", "test"), ("test", "train")):
    forbidden = set(images.face_keys(other)) | set(images.texture_keys(other))
    for i in range(200):
      rng = np.random.default_rng([0, P.SPLIT_TAGS[split], i])
      assert P.sample_scene(rng, split, spec, 3.0).key not in forbidden
  a = P.generate_example(spec, "train", 0, 3)
  b = P.generate_example(spec, "test", 0, 3)
  assert not np.array_equal(a["ref"], b["ref"])
  with pytest.raises(ValueError, match="split"):
    P.generate_example(spec, "valid", 0, 0)


def test_inverse_map_is_exact():
  """Newton + interpolation + Newton: residual of y + f(y) = x over the hi-res grid, worst case
  over strong fields (alpha * A up to the 16 px cap at 64 px)."""
  spec = P.ProceduralSpec()
  rng = np.random.default_rng(0)
  coords = ((np.arange(256) + 0.5) / 4 - 0.5).astype(np.float32)
  x, y = np.meshgrid(coords, coords)
  worst = 0.0
  for scale in (0.05, 0.5, 2.0, 8.0, 16.0, 16.0):
    field = _random_field(rng, 64, spec, 1.0, scale)
    bx, by = P.backward_displacement(field, coords)
    fx, fy = field.eval(x + bx, y + by)
    worst = max(worst, float(np.abs(bx + fx).max()), float(np.abs(by + fy).max()))
  assert worst < 5e-5, worst   # measured ~1e-5 (float32 ulp at 64 px is 7.6e-6)


def test_flow_and_magnified_geometry_on_smooth_scene():
  """On a low-frequency scene bilinear warping is nearly exact, so warp(frame, flow) must give ref
  and warp(magnified, alpha * flow) must give ref, far better than the unwarped frames."""
  spec = P.ProceduralSpec(noise_std=0.0)
  rng = np.random.default_rng(1)
  n = 64
  scene = P.Scene(("pattern", 0), (80.0, 80.0), 1.0, False, n)
  ref = P.render(scene, None, 4)
  grid = np.arange(n, dtype=np.float64)
  for alpha, amp in ((4.0, 0.3), (12.0, 1.2), (0.25, 2.0), (1.5, 1.9)):
    field = _random_field(rng, n, spec, alpha, amp)
    flow = field.on_grid(grid, grid)[0].astype(np.float32)
    frame = P.render(scene, field, 4)
    mag = P.render(scene, field.scaled(alpha), 4)
    m = int(math.ceil(max(alpha, 1.0) * amp)) + 2
    sl = (slice(m, -m), slice(m, -m))
    err_f = np.abs(_warp(frame, flow) - ref)[sl].max()
    err_m = np.abs(_warp(mag, alpha * flow) - ref)[sl].max()
    assert err_f < 2e-3, (alpha, amp, err_f)
    assert err_m < 3e-3, (alpha, amp, err_m)
    assert err_f < 0.1 * np.abs(frame - ref)[sl].max()
    assert err_m < 0.1 * np.abs(mag - ref)[sl].max()


def test_flow_on_real_sources():
  """On face photos and textures the bilinear warp at output resolution is the limit (measured:
  interior mean |warp(frame, flow) - ref| median ~1e-3, worst ~0.025 on fine detail)."""
  ratios, errs = [], []
  for sources in ("faces", "textures"):
    spec = P.ProceduralSpec(noise_std=0.0, sources=sources, max_motion_px=(0.5, 2.0))
    for i in range(6):
      ex = P.generate_example(spec, "train", 1, i)
      m = int(math.ceil(float(ex["amplitude"]))) + 2
      sl = (slice(m, -m), slice(m, -m))
      e = np.abs(_warp(ex["frame"], ex["flow"]) - ex["ref"])[sl].mean()
      e0 = np.abs(ex["frame"] - ex["ref"])[sl].mean()
      errs.append(e)
      ratios.append(e / e0)
  assert max(errs) < 0.04, errs
  assert np.median(ratios) < 0.5, ratios


def test_alpha_one_magnified_equals_frame():
  spec = P.ProceduralSpec(image_size=32, alpha_min=1.0, alpha_max=1.0, noise_std=0.0)
  ex = P.generate_example(spec, "train", 0, 1)
  np.testing.assert_array_equal(ex["magnified"], ex["frame"])


@pytest.mark.parametrize("alpha_range", [(1.0, 16.0), (1 / 16, 1.0), (1 / 16, 16.0)])
def test_amplitude_and_alpha_control(alpha_range):
  lo, hi = 0.1, 1.5
  spec = P.ProceduralSpec(image_size=32, supersample=2, max_motion_px=(lo, hi),
                          alpha_min=alpha_range[0], alpha_max=alpha_range[1])
  for i in range(8):
    ex = P.generate_example(spec, "train", 2, i)
    a, amp = float(ex["alpha"]), float(ex["amplitude"])
    assert alpha_range[0] - 1e-6 <= a <= alpha_range[1] + 1e-6
    top = float(np.linalg.norm(ex["flow"], axis=-1).max())
    assert top == pytest.approx(amp, rel=1e-5)
    assert amp <= hi * (1 + 1e-6)
    assert a * amp <= spec.magnified_cap * (1 + 1e-6)
    assert amp >= lo * (1 - 1e-6) or a * amp == pytest.approx(spec.magnified_cap, rel=1e-5)


def test_bad_config_raises():
  with pytest.raises(ValueError, match="sources"):
    P.ProceduralSpec.from_config({"sources": "cats"})
  with pytest.raises(ValueError, match="alpha"):
    P.ProceduralSpec.from_config({"alpha_min": 2.0, "alpha_max": 1.0})
  with pytest.raises(ValueError, match="max_motion_px"):
    P.ProceduralSpec.from_config({"max_motion_px": (1.0, 0.5)})


# ------------------------------------------------------------------------- micro-expression clips
from data_pipelines import micro_clips as M  # noqa: E402


@pytest.mark.parametrize("name", M.FACES)
def test_face_detector_finds_bundled_faces(name):
  x, y, w, h = M.face_box(name, detect=True)
  fx, fy, fw, fh = M.FALLBACK_BOXES[name]
  ix = max(0, min(x + w, fx + fw) - max(x, fx))
  iy = max(0, min(y + h, fy + fh) - max(y, fy))
  inter = ix * iy
  assert inter / (w * h + fw * fh - inter) > 0.8


def test_time_course_shape():
  c = M.time_course(10, 1, 4, 8)
  assert c[0] == 0 and c[1] == 0 and c[4] == 1 and c[8] == 0 and c[9] == 0
  assert np.all(np.diff(c[1:5]) > 0) and np.all(np.diff(c[4:9]) < 0)
  with pytest.raises(ValueError, match="onset"):
    M.time_course(10, 5, 4, 8)


@pytest.mark.parametrize("fps", [25.0, 30.0, 200.0])
def test_micro_expression_timing_follows_published_durations(fps):
  """Events last at most 0.5 s with the rise about a third of it and <= 0.26 s (Yan et al. 2013),
  never a one-frame rise at the start of the clip, whatever the frame rate."""
  rng = np.random.default_rng(0)
  t_len = int(0.8 * fps)  # room for the longest event
  rows = np.array([M.event_timing(rng, t_len, fps) for _ in range(400)])
  onset, apex, offset = rows.T
  assert np.all((0 <= onset) & (onset < apex) & (apex < offset) & (offset <= t_len - 1))
  total_s, rise_s = (offset - onset) / fps, (apex - onset) / fps
  half_frame = 0.5 / fps  # durations are rounded to whole frames
  assert total_s.max() <= 0.5 + half_frame and total_s.min() >= 0.25 - half_frame
  assert rise_s.max() <= 0.26 + half_frame
  frac = (apex - onset) / (offset - onset)
  assert 0.25 <= np.median(frac) <= 0.4
  assert (apex - onset).min() >= 2  # at 25 fps the shortest rise is 0.25 x 0.25 s = 1.6 frames
  # A clip shorter than an event holds it whole, squeezed.
  short = np.array([M.event_timing(rng, 6, fps) for _ in range(50)])
  assert np.all((short[:, 0] < short[:, 1]) & (short[:, 1] < short[:, 2]) & (short[:, 2] <= 5))
  with pytest.raises(ValueError, match="fps"):
    M.event_timing(rng, 8, 0.0)


@pytest.fixture(scope="module")
def clip():
  return M.make_clip({"image_size": 48, "num_frames": 8}, seed=3)


def test_micro_clip_apex_amplitude_and_format(clip):
  t = 8
  assert clip.frames.shape == (t, 48, 48, 3) and clip.frames.dtype == np.float32
  assert clip.flows.shape == (t, 48, 48, 2) and clip.flows.dtype == np.float32
  peak = np.linalg.norm(clip.flows, axis=-1).max(axis=(1, 2))
  assert int(np.argmax(peak)) == clip.apex_index
  assert peak[clip.apex_index] == pytest.approx(clip.amplitude, rel=1e-5)
  assert 0.1 <= clip.amplitude <= 1.0
  assert peak[0] == 0.0
  still = P.render(clip.scene, None, clip.supersample)
  np.testing.assert_allclose(clip.frames[0], still, atol=1e-6)
  assert all(a in M.AUS for a in clip.au)
  again = M.make_clip({"image_size": 48, "num_frames": 8}, seed=3)
  np.testing.assert_array_equal(again.frames, clip.frames)


def test_micro_clip_motion_is_localized(clip):
  n = clip.frames.shape[1]
  yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
  near = np.zeros((n, n), bool)
  for cx, cy, sx, sy in clip.bumps:
    near |= ((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2 < 16.0   # within 4 sigma
  assert near.any() and not near.all()
  mag = np.linalg.norm(clip.flows[clip.apex_index], axis=-1)
  assert mag[~near].max() < 1e-3 * clip.amplitude + 1e-7
  diff = np.abs(clip.frames[clip.apex_index] - clip.frames[0]).max(-1)
  assert diff[~near].max() < 2e-3


def test_micro_clip_magnified_ground_truth(clip):
  alpha = min(4.0, clip.max_alpha)
  a = clip.apex_index
  mag = clip.magnified(alpha)
  assert mag.shape == clip.frames.shape
  back = _warp(mag[a], alpha * clip.flows[a])
  err = np.abs(back - clip.frames[0])[4:-4, 4:-4]
  base = np.abs(mag[a] - clip.frames[0])[4:-4, 4:-4]
  # Sharp facial detail at 48 px limits the bilinear warp (measured ratio ~0.3 at alpha 4); the
  # geometry itself is exact (smooth-scene test above) and checked exactly below.
  assert err.mean() < 0.5 * base.mean()
  np.testing.assert_array_equal(clip.magnified(1.0, [a])[0], clip.frames[a])
  # magnified(c_t)[apex] is the clip's own frame t: flows scale linearly with alpha.
  t = int(np.argmax((clip.course > 0) & (clip.course < 1)))
  same = clip.magnified(float(clip.course[t]), [a])[0]
  np.testing.assert_allclose(same, clip.frames[t], atol=1e-5)
  with pytest.raises(ValueError, match="max_alpha"):
    clip.magnified(clip.max_alpha * 1.5)
