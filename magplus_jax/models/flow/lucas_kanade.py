"""Weight-free optical flow: coarse-to-fine dense Lucas-Kanade, unrolled in JAX.

This is the flow network F of the embedded default (no downloaded weights). MagPlus is trained by
back-propagating `L1(F(I0, pred), alpha * F(I0, It))` through it, so it must be pure, differentiable
with respect to both images, cheap on CPU (it runs twice in every train step) and accurate from
micro-expression motion (0.05 px) up to magnified motion (several pixels).

Per pyramid level, coarse to fine, a fixed number of Gauss-Newton iterations (a `fori_loop`):
  1. sample image2 and its derivatives at p + flow(p) (`resample.warp`, edge-clamped),
  2. at every pixel, linearise the brightness constancy about that pixel's own current flow:
     g . f* = g . f - (I2(p + f) - I1(p)), with g the mean of the derivatives of both images,
  3. solve the Gaussian-windowed least squares of these constraints, damped towards a blurred copy
     of the current flow, in closed form per pixel (a 2x2 system; no jnp.linalg).
Design decisions, each measured (see tests/test_flow_weightfree.py and the issue note):
  * Re-linearising per pixel (step 2) instead of adding a windowed update to the flow makes the
    iteration a contraction for spatially varying flow; the additive form drifts as it iterates.
  * Derivatives of image2 are sampled at p + f (not taken of the warped image), which is the
    derivative the linearisation needs when the flow deforms the image.
  * Prefilter and derivative are Farid & Simoncelli's matched 5-tap pair: with central differences
    the derivative underestimates fine texture and the flow comes out 10-15 % too large.
  * At full resolution the linearisation point is the flow rounded to whole pixels, so image2 is
    sampled without interpolation. Bilinear interpolation at fractional positions lags in phase and
    over-estimates sub-pixel motion by ~10-15 %; with whole-pixel sampling a 0.05 px shift is
    measured to ~1 %. Coarser levels use the bilinear warp (their job is the large motion).
  * The damping `eps` (Tikhonov, towards the blurred current flow) keeps flat regions at the
    coarser level's flow (zero at the coarsest) without division blow-ups; where there is texture
    (structure tensor >> eps) it does not bias the result.
  * Each step is capped at `max_step` px (trust region): where the data contradict each other
    (content leaving the frame, black borders) an uncapped iteration ran away to tens of pixels.
Defaults: levels=4 but never a level below `min_size`=16 px (256 px images: 4 levels, motion up to
~16 px; 64 px: 3 levels, ~8 px); iters=3 per coarse level; iters_finest=3; sigma=2 px window;
eps=1e-5 (intensities in [0, 1]); prior_sigma=2 px; max_step=1 px; presmooth=0 (the 5-tap
prefilter already smooths; extra blur measured worse); color=False (luminance only, ~3x cheaper;
summing the per-channel structure tensors is more accurate where colour carries texture that
luminance does not, e.g. 4.5 % vs 7 % relative EPE on independent-channel random textures).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from magplus_jax.models import resample
from magplus_jax.models.flow import FlowEstimator

Array = jax.Array

_LUMA = (0.299, 0.587, 0.114)
# Farid & Simoncelli (2004) 5-tap matched prefilter / first-derivative pair.
_PREFILTER = (0.037659, 0.249153, 0.426375, 0.249153, 0.037659)
_DERIVATIVE = (-0.109604, -0.276691, 0.0, 0.276691, 0.109604)

DEFAULTS = dict(levels=4, min_size=16, iters=3, iters_finest=3, sigma=2.0, eps=1e-5,
                prior_sigma=2.0, pyramid_sigma=1.0, presmooth=0.0, max_step=1.0, color=False)


def _gaussian_kernel(sigma: float) -> np.ndarray:
  radius = max(1, int(math.ceil(3.0 * sigma)))
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-0.5 * (x / sigma) ** 2)
  return k / np.sum(k)


@functools.lru_cache(maxsize=64)
def _band_matrix(n: int, kernel: tuple[float, ...]) -> np.ndarray:
  """[n, n] matrix M with (M @ x)[i] = sum_j kernel[j] * x[clip(i + j - r)] (edge padding)."""
  r = (len(kernel) - 1) // 2
  m = np.zeros((n, n), np.float64)
  rows = np.arange(n)
  for j, kj in enumerate(kernel):
    np.add.at(m, (rows, np.clip(rows + j - r, 0, n - 1)), kj)
  return m.astype(np.float32)


def _conv_separable(x: Array, k_row: np.ndarray, k_col: np.ndarray) -> Array:
  """Separable 'same' correlation of every channel of [B, H, W, C], edge padding.

  Done as two matmuls with banded [H, H] and [W, W] matrices: on CPU, XLA's depthwise convolution
  was measured ~30x slower, and a sum of shifted slices ~40x slower in the backward pass (the flow
  is differentiated in every train step). HIGHEST precision keeps TPUs off bf16 passes, which would
  cost the sub-pixel accuracy.
  """
  my = _band_matrix(x.shape[1], tuple(float(v) for v in k_col))
  mx = _band_matrix(x.shape[2], tuple(float(v) for v in k_row))
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("hk,bkwc->bhwc", my, x, precision=hi)
  return jnp.einsum("wk,bhkc->bhwc", mx, x, precision=hi)


def gaussian_blur(x: Array, sigma: float) -> Array:
  """Gaussian blur of [B, H, W, C] with edge padding (separable, 3-sigma support)."""
  k = _gaussian_kernel(sigma)
  return _conv_separable(x, k, k)


def _filtered(x: Array) -> Array:
  """[B, H, W, C] -> [B, H, W, 3C]: prefiltered image, d/dx, d/dy (matched 5-tap pair)."""
  p, d = np.asarray(_PREFILTER), np.asarray(_DERIVATIVE)
  return jnp.concatenate([_conv_separable(x, p, p), _conv_separable(x, d, p),
                          _conv_separable(x, p, d)], -1)


def _warp_clamped(image: Array, flow: Array) -> Array:
  """`resample.warp` with sample positions clamped into the image (edge replication).

  Zeros padding would read a large false mismatch at borders where the flow points outside.
  """
  _, h, w, _ = image.shape
  grid = resample.pixel_grid(h, w, flow.dtype)[None]
  pos = grid + flow
  pos = jnp.stack([jnp.clip(pos[..., 0], 0.0, w - 1.0), jnp.clip(pos[..., 1], 0.0, h - 1.0)], -1)
  return resample.warp(image, pos - grid)


def _lk_step(flow: Array, f1: Array, f2: Array, window: np.ndarray, prior_kernel: np.ndarray,
             eps: float, max_step: float, whole_pixel: bool) -> Array:
  """One Gauss-Newton iteration at one level. flow [B, h, w, 2]; f1, f2 from `_filtered`."""
  c = f1.shape[-1] // 3
  lin = jnp.round(flow) if whole_pixel else flow
  f2w = _warp_clamped(f2, lin)
  it = f2w[..., :c] - f1[..., :c]
  gx = 0.5 * (f1[..., c:2 * c] + f2w[..., c:2 * c])
  gy = 0.5 * (f1[..., 2 * c:] + f2w[..., 2 * c:])
  rhs = gx * lin[..., 0:1] + gy * lin[..., 1:2] - it
  terms = jnp.concatenate([
      jnp.sum(gx * gx, -1, keepdims=True), jnp.sum(gx * gy, -1, keepdims=True),
      jnp.sum(gy * gy, -1, keepdims=True), jnp.sum(gx * rhs, -1, keepdims=True),
      jnp.sum(gy * rhs, -1, keepdims=True)], axis=-1)
  terms = _conv_separable(terms, window, window)
  prior = _conv_separable(flow, prior_kernel, prior_kernel)
  axx = terms[..., 0] + eps
  axy = terms[..., 1]
  ayy = terms[..., 2] + eps
  bx = terms[..., 3] + eps * prior[..., 0]
  by = terms[..., 4] + eps * prior[..., 1]
  det = axx * ayy - axy * axy  # >= eps^2 > 0: the structure tensor is positive semi-definite.
  new = jnp.stack([(ayy * bx - axy * by) / det, (axx * by - axy * bx) / det], axis=-1)
  # Trust region: where the linearisation is wrong (edges, occlusion, clipped texture) a step can be
  # arbitrarily large and the iteration runs away; cap each step's length at max_step pixels.
  step = new - flow
  norm = jnp.sqrt(jnp.sum(step * step, -1, keepdims=True) + 1e-12)
  return flow + step * jnp.minimum(1.0, max_step / norm)


def _num_levels(h: int, w: int, levels: int, min_size: int) -> int:
  n = 1
  while n < levels and min(h, w) // (2 ** n) >= min_size:
    n += 1
  return n


def pyramid_lk(image1: Array, image2: Array, *, levels: int = 4, min_size: int = 16,
               iters: int = 3, iters_finest: int = 3, sigma: float = 2.0, eps: float = 1e-5,
               prior_sigma: float = 2.0, pyramid_sigma: float = 1.0, presmooth: float = 0.0,
               max_step: float = 1.0, color: bool = False) -> Array:
  """Flow image1 -> image2. image1, image2: [B, H, W, 3] in [0, 1] -> [B, H, W, 2] (x, y) pixels."""
  if image1.ndim != 4 or image1.shape[-1] != 3 or image1.shape != image2.shape:
    raise ValueError(f"pyramid_lk: image1 and image2 must both be [B, H, W, 3] of equal shape; "
                     f"got {tuple(image1.shape)} and {tuple(image2.shape)}")
  _, h, w, _ = image1.shape
  if min(h, w) < 8:
    raise ValueError(f"pyramid_lk: images of {h}x{w} pixels are too small (need at least 8x8)")
  im1 = image1.astype(jnp.float32)
  im2 = image2.astype(jnp.float32)
  if not color:
    luma = jnp.asarray(_LUMA, jnp.float32)
    im1 = jnp.sum(im1 * luma, -1, keepdims=True)
    im2 = jnp.sum(im2 * luma, -1, keepdims=True)
  if presmooth > 0:
    im1 = gaussian_blur(im1, presmooth)
    im2 = gaussian_blur(im2, presmooth)

  n = _num_levels(h, w, levels, min_size)
  pyramid = [(im1, im2)]
  for _ in range(n - 1):
    a, b = pyramid[-1]
    size = ((a.shape[1] + 1) // 2, (a.shape[2] + 1) // 2)
    pyramid.append(tuple(resample.resize_bilinear(gaussian_blur(x, pyramid_sigma), size)
                         for x in (a, b)))

  window = _gaussian_kernel(sigma)
  prior_kernel = _gaussian_kernel(prior_sigma)
  flow = None
  for level in reversed(range(n)):
    f1, f2 = (_filtered(x) for x in pyramid[level])
    if flow is None:
      flow = jnp.zeros(f1.shape[:3] + (2,), jnp.float32)
    else:
      flow = resample.resize_flow(flow, f1.shape[1:3])
    finest = level == 0

    def body(_, fl, f1=f1, f2=f2, finest=finest):
      return _lk_step(fl, f1, f2, window, prior_kernel, eps, max_step, finest)

    flow = jax.lax.fori_loop(0, iters_finest if finest else iters, body, flow)
  return flow


def build(flow_config) -> FlowEstimator:
  """FlowEstimator "pyramid_lk" from a ConfigDict; missing fields take `DEFAULTS` (module doc)."""
  opts = {k: type(v)(flow_config.get(k, v)) for k, v in DEFAULTS.items()}
  if opts["levels"] < 1 or opts["iters"] < 0 or opts["iters_finest"] < 1 or opts["min_size"] < 8:
    raise ValueError("config.flow (pyramid_lk): need levels >= 1, iters >= 0, iters_finest >= 1, "
                     f"min_size >= 8; got {opts}")
  if min(opts["sigma"], opts["eps"], opts["prior_sigma"], opts["pyramid_sigma"],
         opts["max_step"]) <= 0 \
      or opts["presmooth"] < 0:
    raise ValueError("config.flow (pyramid_lk): sigma, eps, prior_sigma, pyramid_sigma, max_step "
                     "must be > 0 "
                     f"and presmooth >= 0; got {opts}")

  def flow_fn(params, image1: Array, image2: Array) -> Array:
    del params  # weight-free
    return pyramid_lk(image1, image2, **opts)

  return FlowEstimator(name="pyramid_lk", params={}, flow_fn=flow_fn)
