"""Properties of the numeric building blocks, over many inputs (hypothesis, derandomized).

resampling (grid_sample identity, warp by zero / integer flows, linearity of sample_pixels),
magnifier.repeats_for, metrics.psnr / ssim, calibration.choose_alpha and the procedural
generator's amplitude / alpha ranges. Sizes are drawn from small fixed sets so that JAX compiles
a handful of shapes only.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_pipelines import procedural
from magplus_jax import calibration
from magplus_jax.evaluation import metrics
from magplus_jax.models import magnifier, resample

jax.config.update("jax_default_matmul_precision", "highest")

# jitted: one compilation per shape instead of op-by-op dispatch of every example
grid_sample = jax.jit(resample.grid_sample, static_argnames=("align_corners",))
warp = jax.jit(resample.warp)
sample_pixels = jax.jit(resample.sample_pixels)
psnr, ssim = jax.jit(metrics.psnr), jax.jit(metrics.ssim)

SETTINGS = settings(derandomize=True, max_examples=12, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
SIZES = st.sampled_from([(5, 7), (8, 8), (12, 9)])
SEEDS = st.integers(0, 2 ** 31 - 1)


def _image(seed, b, h, w, c):
  return np.random.default_rng(seed).uniform(0.0, 1.0, (b, h, w, c)).astype(np.float32)


# --------------------------------------------------------------------------------- resampling
@SETTINGS
@given(size=SIZES, c=st.sampled_from([1, 3]), seed=SEEDS, align_corners=st.booleans())
def test_grid_sample_identity_grid_reproduces_the_image(size, c, seed, align_corners):
  h, w = size
  img = _image(seed, 2, h, w, c)
  if align_corners:  # -1 / +1 are the centres of the corner pixels
    grid = resample.make_coordinate_grid(h, w)
  else:  # -1 / +1 are the outer edges: pixel centres at (2i + 1) / n - 1
    xs = (2.0 * np.arange(w) + 1.0) / w - 1.0
    ys = (2.0 * np.arange(h) + 1.0) / h - 1.0
    grid = jnp.stack(jnp.meshgrid(jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32),
                                  indexing="xy"), axis=-1)
  grid = jnp.broadcast_to(grid, (2, h, w, 2))
  out = grid_sample(jnp.asarray(img), grid, align_corners=align_corners)
  np.testing.assert_allclose(np.asarray(out), img, atol=2e-6)


@SETTINGS
@given(size=SIZES, seed=SEEDS)
def test_warp_by_zero_flow_is_identity(size, seed):
  h, w = size
  img = _image(seed, 1, h, w, 3)
  out = warp(jnp.asarray(img), jnp.zeros((1, h, w, 2), jnp.float32))
  np.testing.assert_array_equal(np.asarray(out), img)


@SETTINGS
@given(size=SIZES, seed=SEEDS, dx=st.integers(-3, 3), dy=st.integers(-3, 3))
def test_warp_by_integer_translation_is_a_shift(size, seed, dx, dy):
  """out[y, x] = img[y + dy, x + dx] where that pixel exists, zeros elsewhere (zeros padding)."""
  h, w = size
  img = _image(seed, 1, h, w, 2)
  flow = jnp.broadcast_to(jnp.array([dx, dy], jnp.float32), (1, h, w, 2))
  out = np.asarray(warp(jnp.asarray(img), flow))[0]
  expected = np.zeros_like(img[0])
  ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
  expected[ys, xs] = img[0, max(0, dy):min(h, h + dy), max(0, dx):min(w, w + dx)]
  np.testing.assert_allclose(out, expected, atol=1e-6)


@SETTINGS
@given(size=SIZES, seed=SEEDS, a=st.floats(-3, 3), b=st.floats(-3, 3))
def test_sample_pixels_is_linear_in_the_image(size, seed, a, b):
  h, w = size
  rng = np.random.default_rng(seed)
  i1, i2 = _image(seed, 1, h, w, 3), _image(seed + 1, 1, h, w, 3)
  x = jnp.asarray(rng.uniform(-2, w + 1, (1, 40)), jnp.float32)  # inside and outside
  y = jnp.asarray(rng.uniform(-2, h + 1, (1, 40)), jnp.float32)
  s = lambda im: np.asarray(sample_pixels(jnp.asarray(im), x, y))
  np.testing.assert_allclose(s(a * i1 + b * i2), a * s(i1) + b * s(i2), atol=2e-5)


# ------------------------------------------------------------------------------ repeats_for
ALPHA_MAX = st.sampled_from([2.0, 4.0, 16.0])


@SETTINGS
@given(alpha_max=ALPHA_MAX, max_repeats=st.integers(1, 3), u=st.floats(0.0, 1.0),
       v=st.floats(0.0, 1.0))
def test_repeats_for_is_monotone_symmetric_and_minimal(alpha_max, max_repeats, u, v):
  top = alpha_max ** max_repeats
  a1, a2 = sorted((top ** u, top ** v))  # log-uniform in [1, alpha_max ** max_repeats]
  k1 = magnifier.repeats_for(a1, alpha_max, max_repeats)
  k2 = magnifier.repeats_for(a2, alpha_max, max_repeats)
  assert 1 <= k1 <= k2 <= max_repeats
  assert magnifier.repeats_for(1.0 / a1, alpha_max, max_repeats) == k1  # DeMagPlus: 1 / alpha
  assert a1 <= alpha_max ** k1 * (1 + 1e-9)  # enough applications, each alpha ** (1/k) <= max
  if k1 > 1:
    assert a1 > alpha_max ** (k1 - 1) * (1 - 1e-9)  # and no more than needed


@pytest.mark.parametrize("alpha", [0.0, -1.0, -1e-9, float("nan"), float("inf"), -float("inf")])
def test_repeats_for_refuses_invalid_alpha(alpha):
  with pytest.raises(ValueError, match="alpha"):
    magnifier.repeats_for(alpha, 16.0, 2)


@SETTINGS
@given(alpha_max=ALPHA_MAX, max_repeats=st.integers(1, 3), f=st.floats(1.01, 100.0))
def test_repeats_for_refuses_alpha_beyond_reach(alpha_max, max_repeats, f):
  beyond = alpha_max ** max_repeats * f
  for a in (beyond, 1.0 / beyond):
    with pytest.raises(ValueError, match="max_repeats"):
      magnifier.repeats_for(a, alpha_max, max_repeats)


# ----------------------------------------------------------------------------------- metrics
@SETTINGS
@given(seed=SEEDS, noise=st.floats(0.0, 1.0))
def test_psnr_and_ssim_bounds_identity_symmetry(seed, noise):
  x = _image(seed, 2, 16, 16, 3)
  y = np.clip(x + noise * (_image(seed + 7, 2, 16, 16, 3) - 0.5), 0, 1).astype(np.float32)
  x, y = jnp.asarray(x), jnp.asarray(y)
  p, p_rev, p_self = (float(psnr(a, b)) for a, b in ((x, y), (y, x), (x, x)))
  assert p >= 0.0 and math.isfinite(p) and p == pytest.approx(p_rev, rel=1e-6)
  assert p_self >= 100.0 and p <= p_self  # identical images: the 1e-12 floor, the maximum
  s, s_rev, s_self = (float(ssim(a, b)) for a, b in ((x, y), (y, x), (x, x)))
  assert -1.0 <= s <= 1.0 + 1e-6 and s == pytest.approx(s_rev, abs=1e-6)
  assert s_self == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------------------------- calibration
@SETTINGS
@given(motion=st.floats(0.0, 50.0), target=st.floats(1e-3, 50.0), alpha_max=st.floats(1.5, 256),
       more=st.floats(0.0, 10.0))
def test_choose_alpha_in_range_and_non_increasing_in_motion(motion, target, alpha_max, more):
  a = calibration.choose_alpha(motion, target, alpha_max)
  assert 1.0 <= a <= alpha_max
  assert calibration.choose_alpha(motion + more, target, alpha_max) <= a + 1e-9


@pytest.mark.parametrize("motion,target", [(float("nan"), 1.0), (-1.0, 1.0), (1.0, 0.0),
                                           (1.0, -2.0), (1.0, float("nan")),
                                           (float("inf"), 1.0)])
def test_choose_alpha_refuses_invalid_measurements(motion, target):
  with pytest.raises(ValueError):
    calibration.choose_alpha(motion, target, 16.0)


# ----------------------------------------------------------------------- procedural generator
@settings(derandomize=True, max_examples=8, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), index=st.integers(0, 10_000),
       lo=st.floats(0.02, 1.0), span=st.floats(1.0, 8.0), alpha_max=st.sampled_from([4.0, 16.0]))
def test_procedural_amplitude_and_alpha_within_requested_range(seed, index, lo, span, alpha_max):
  spec = procedural.ProceduralSpec(image_size=16, supersample=2, max_motion_px=(lo, lo * span),
                                   alpha_max=alpha_max, max_bumps=2)
  ex = procedural.generate_example(spec, "train", seed, index)
  alpha, amp = float(ex["alpha"]), float(ex["amplitude"])
  assert spec.alpha_min <= alpha <= alpha_max * (1 + 1e-6)
  hi = lo * span
  cap = spec.magnified_cap / alpha
  assert min(lo, cap) * (1 - 1e-5) <= amp <= min(hi, cap) * (1 + 1e-5)
  # the documented contract: max |flow| over the output pixel grid is exactly the amplitude
  np.testing.assert_allclose(np.max(np.linalg.norm(ex["flow"], axis=-1)), amp, rtol=1e-4)
  assert np.all(np.isfinite(ex["flow"]))
  for k in ("ref", "frame", "magnified"):
    assert ex[k].min() >= 0.0 and ex[k].max() <= 1.0
