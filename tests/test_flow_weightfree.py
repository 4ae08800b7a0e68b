"""The weight-free flow estimator (pyramid_lk) on procedural pairs with exact ground truth.

Pairs: an analytic band-limited colour texture T (random plane waves, wavelengths 3-40 px) and a
smooth random flow f (plane waves of wavelength 1-2 image sizes, scaled to a given maximum
amplitude); image2 = T(p), image1 = T(p + f(p)), both evaluated analytically, so f is exactly the
flow image1 -> image2 (no interpolation in the ground truth). EPE is averaged over the interior
(8 px border excluded). Bounds are ~1.5-2x what was measured when the estimator was written.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from magplus_jax.models.flow import get_flow
from magplus_jax.models.flow import lucas_kanade

jax.config.update("jax_default_matmul_precision", "highest")

SIZE = 64
AMPLITUDES = (0.05, 0.2, 1.0, 4.0)
# amplitude -> (max mean EPE in px, max relative EPE = EPE / mean |gt|). Measured with the defaults
# on seed 0: EPE 0.0012, 0.0049, 0.025, 0.099 px, relative 0.054 at every amplitude (seeds 1, 2:
# relative 0.089, 0.046). The relative error is a window-averaging effect of a local method on a
# deforming flow (it scales with the flow, see test_subpixel_translation_is_unbiased).
BOUNDS = {0.05: (0.002, 0.09), 0.2: (0.008, 0.09), 1.0: (0.04, 0.09), 4.0: (0.17, 0.09)}


def _texture(rng, n=48):
  theta = rng.uniform(0, 2 * np.pi, (3, n))
  lam = np.exp(rng.uniform(np.log(3.0), np.log(40.0), (3, n)))
  phase = rng.uniform(0, 2 * np.pi, (3, n))
  amp = rng.uniform(0.5, 1.0, (3, n)) * 0.3 / np.sqrt(n)
  fx, fy = np.cos(theta) / lam, np.sin(theta) / lam

  def texture(x, y):
    arg = 2 * np.pi * (x[..., None, None] * fx + y[..., None, None] * fy) + phase
    return np.clip(0.5 + np.sum(amp * np.cos(arg), -1), 0.0, 1.0)

  return texture


def _flow_field(rng, size, max_amp, n=6):
  y, x = np.mgrid[0:size, 0:size].astype(np.float64)
  f = np.zeros((size, size, 2))
  for c in range(2):
    for _ in range(n):
      th = rng.uniform(0, 2 * np.pi)
      lam = rng.uniform(1.0, 2.0) * size
      f[..., c] += rng.normal() * np.cos(
          2 * np.pi * (np.cos(th) * x + np.sin(th) * y) / lam + rng.uniform(0, 2 * np.pi))
  return f * max_amp / np.max(np.linalg.norm(f, axis=-1))


def make_pair(seed, size, max_amp):
  """(image1, image2, flow) as float32 [H, W, 3], [H, W, 3], [H, W, 2]."""
  rng = np.random.default_rng(seed)
  texture = _texture(rng)
  flow = _flow_field(rng, size, max_amp)
  y, x = np.mgrid[0:size, 0:size].astype(np.float64)
  image2 = texture(x, y)
  image1 = texture(x + flow[..., 0], y + flow[..., 1])
  return image1.astype(np.float32), image2.astype(np.float32), flow.astype(np.float32)


def interior_epe(pred, gt, border=8):
  err = np.linalg.norm(np.asarray(pred) - gt, axis=-1)[..., border:-border, border:-border]
  mag = np.linalg.norm(gt, axis=-1)[..., border:-border, border:-border]
  return err.mean(axis=(-2, -1)), err.mean(axis=(-2, -1)) / mag.mean(axis=(-2, -1))


@pytest.fixture(scope="module")
def estimator():
  return get_flow(ml_collections.ConfigDict({"name": "pyramid_lk"}))


@pytest.fixture(scope="module")
def flow_jit(estimator):
  return jax.jit(estimator.flow_fn)


def test_build_defaults_and_config(estimator):
  assert estimator.name == "pyramid_lk" and estimator.params == {}
  custom = lucas_kanade.build(ml_collections.ConfigDict({"name": "pyramid_lk", "levels": 2,
                                                         "sigma": 3.0}))
  assert custom.name == "pyramid_lk"
  with pytest.raises(ValueError, match="sigma"):
    lucas_kanade.build(ml_collections.ConfigDict({"name": "pyramid_lk", "sigma": 0.0}))


def test_epe_on_known_flow(flow_jit):
  """All four amplitudes in one batch (one compile)."""
  pairs = [make_pair(0, SIZE, a) for a in AMPLITUDES]
  image1, image2, gt = (np.stack(x) for x in zip(*pairs))
  pred = flow_jit({}, jnp.asarray(image1), jnp.asarray(image2))
  assert pred.shape == (len(AMPLITUDES), SIZE, SIZE, 2) and pred.dtype == jnp.float32
  epe, rel = interior_epe(pred, gt)
  for a, e, r in zip(AMPLITUDES, epe, rel):
    max_epe, max_rel = BOUNDS[a]
    assert e < max_epe and r < max_rel, f"amplitude {a} px: EPE {e:.4f} px, relative {r:.3f}"


def test_subpixel_translation_is_unbiased(flow_jit):
  """A uniform shift (t, t/2): the mean estimate is unbiased to 1 % at 0.05 and 0.2 px and 5 % up
  to 1 px (measured: 0.2 %, 0.5 %, 2.8 % at 0.5 px where whole-pixel rounding is ambiguous, 0.8 %).

  Bilinear sampling at fractional positions or central differences would read 10-15 % too much.
  """
  rng = np.random.default_rng(5)
  texture = _texture(rng)
  y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
  shifts = np.array([[t, t / 2] for t in (0.05, 0.2, 0.5, 1.0)])
  image2 = np.broadcast_to(texture(x, y), (4, SIZE, SIZE, 3))
  image1 = np.stack([texture(x + sx, y + sy) for sx, sy in shifts])
  flow = np.asarray(flow_jit({}, jnp.asarray(image1, jnp.float32),
                             jnp.asarray(image2, jnp.float32)))
  mean = flow[:, 8:-8, 8:-8].mean(axis=(1, 2))
  rel = np.abs(mean - shifts) / shifts
  assert np.all(rel[:2] < 0.01) and np.all(rel < 0.05), rel


def test_zero_motion_and_flat_images(flow_jit):
  image, _, _ = make_pair(1, SIZE, 0.0)
  flat = np.full((SIZE, SIZE, 3), 0.5, np.float32)
  images = jnp.asarray(np.stack([image, flat, image[::-1], flat * 0.2]))  # batch 4: no recompile
  flow = np.asarray(flow_jit({}, images, images))
  assert np.all(np.isfinite(flow))
  assert np.max(np.abs(flow)) < 1e-4


def test_vmap_agrees_with_batched_jit(estimator, flow_jit):
  pairs = [make_pair(0, SIZE, a) for a in AMPLITUDES]  # the EPE test's batch: compile is cached
  image1, image2, _ = (jnp.asarray(np.stack(x)) for x in zip(*pairs))
  batched = flow_jit({}, image1, image2)
  mapped = jax.jit(jax.vmap(estimator.__call__))(image1[:, None], image2[:, None])
  np.testing.assert_allclose(mapped[:, 0], batched, atol=1e-4)


def test_gradients_finite_and_match_finite_differences(estimator):
  """d<w, F(I1, I2)> along a random direction of both images vs central differences."""
  image1, image2, _ = make_pair(4, 32, 0.3)
  image1, image2 = jnp.asarray(image1)[None], jnp.asarray(image2)[None]
  rng = np.random.default_rng(0)
  weights = jnp.asarray(rng.normal(size=(1, 32, 32, 2)), jnp.float32)
  d1, d2 = (jnp.asarray(rng.normal(size=(1, 32, 32, 3)) * 0.01, jnp.float32) for _ in range(2))

  def loss(a, b):
    return jnp.sum(estimator(a, b) * weights)

  value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))  # one compile for both
  g1, g2 = value_and_grad(image1, image2)[1]
  assert np.all(np.isfinite(g1)) and np.all(np.isfinite(g2))
  assert float(jnp.abs(g1).max()) > 0 and float(jnp.abs(g2).max()) > 0
  for direction, grad, which in ((d1, g1, 0), (d2, g2, 1)):
    analytic = float(jnp.sum(grad * direction))
    h = 0.05
    args_p = [image1, image2]
    args_m = [image1, image2]
    args_p[which] = args_p[which] + h * direction
    args_m[which] = args_m[which] - h * direction
    numeric = float(value_and_grad(*args_p)[0] - value_and_grad(*args_m)[0]) / (2 * h)
    # Measured: relative disagreement 2e-4 (image1), 4e-5 (image2).
    assert abs(analytic - numeric) < 0.01 * abs(numeric) + 1e-3, (which, analytic, numeric)


@pytest.mark.parametrize("shape1,shape2", [
    ((1, 32, 32, 3), (1, 32, 31, 3)),
    ((1, 32, 32, 1), (1, 32, 32, 1)),
    ((32, 32, 3), (32, 32, 3)),
])
def test_bad_shapes_raise(estimator, shape1, shape2):
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    estimator(jnp.zeros(shape1), jnp.zeros(shape2))
