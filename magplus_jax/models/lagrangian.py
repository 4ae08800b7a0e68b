"""The Lagrangian output of the MagPlus network: move the pixels of I_t, do not scale I_t - I_ref.

Why: Eulerian forms (I_t + (alpha - 1) * g * (I_t - I_ref)) are linear magnification by
construction; they ghost once alpha x motion exceeds the texture scale and amplify noise with the
motion. Oh et al.'s protocol magnifies 0.04 px to 10 px: only a method that displaces pixels gets
there (measured at 64 px, no network: SSIM 0.95 for flow-and-warp vs 0.70 for phase-based YIQ).

The form (all pixel units, (x, y)):
  1. motion features: m = F0(I_ref, I_t), the weight-free coarse-to-fine Lucas-Kanade of
     models/flow (no gradient, no weights), and its Gaussian blurs at BLUR_SIGMAS, each gated by its
     own reliability at this alpha (`gate`, below);
  2. the network reads [I_ref, I_t, alpha encoding, log alpha, alpha * features] and predicts per
     pixel a convex mixture over the scales (softmax) and a gain in (0, GAIN_MAX):
     f = gain * sum_s w_s * blur_s(m). This is where learning acts: how much to smooth where
     (aperture, texture), how far to trust the estimate at this alpha;
  3. the magnified position of the scene point p is p + alpha f(p); the output at q shows the point
     p(q) with p + alpha f(p) = q, found by fixed-point iteration (a contraction wherever
     alpha |grad f| < 1: the fields the magnifier is trained on are fold-free);
  4. out(q) = I_t(q - (alpha - 1) f(p(q))), bilinear through resample.sample_pixels, positions
     clamped into the frame (edge replication: no black borders where content enters).
     For alpha < 1 (DeMagPlus) the output blends that with the reference moved forward,
     I_ref(q - alpha f(p(q))), weight 1 - alpha: both show the same scene point, but an error e in
     f moves the first by (1 - alpha) e and the second by alpha e in opposite directions, so the
     blend cancels it to first order. Warping I_t alone left the round trip MagPlus -> DeMagPlus at
     1.2x-4.4x the input motion for alpha 4-32 (session 4, 128 px), since attenuating by 1/alpha
     needs f to (7 % / alpha) accuracy; the blend needs it to about 7 %.

The gate (why: Oh et al.'s noise test, 0.05 px magnified 200x under noise of std 1-100 / 255).
Under noise the Lucas-Kanade estimate is mostly noise (mean |m| 2.8 px for a true 0.05 px at std
10 / 255, 64 px) and alpha x noise scrambles the frame: SSIM fell to 0.11 where doing nothing scores
0.25. A network fed normalised features cannot recover the absolute noise level (GroupNorm removes
per-image constants), so the reliability is measured, weight-free, per image and per pixel:
  * sigma_n, the frames' noise std: Immerkaer's Laplacian-difference estimate on the grey frame
    difference (structure-insensitive; measured 1.03 / 2.98 / 9.77 for true 1 / 3 / 10 on 255);
  * v_s, the variance of the estimate that noise alone produces: F0 on a null pair (I_ref and
    I_ref plus fresh noise of the difference's std, a fixed draw), blurred like m, squared and
    averaged locally (GATE_SIGMA). This counts pyramid, aperture and texture effects exactly where
    an analytic (A^T A)^-1 bound underestimated them 10-100x;
  * c_s = |m_s|^2 / (|m_s|^2 + 2 v_s) * exp(-alpha^2 v_s / GATE_PX^2): Wiener shrinkage times a
    cut where the expected magnified error exceeds a few pixels. With c_s -> 0 the output is I_t,
    i.e. exactly the "do nothing" baseline, never worse than it.
Measured with the shipped weights (protocol, 64 px, 8 pairs; magplus_jax/pretrained/README.md):
noise std 3: 0.12 -> 0.42 (identity 0.39), std 10: 0.11 -> 0.25 (0.25), std 30 and 100: equal to
the identity; std 1: 0.60 -> 0.64 (phase YIQ 0.57); noise-free 0.955 -> 0.942.
Properties by construction, for any weights: alpha = 1 returns I_t exactly (zero displacement);
I_t = I_ref gives F0 = 0 exactly, hence f = 0 and a still output (static in => static out); an
alpha map of 1 leaves those pixels untouched.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from magplus_jax.models import resample
from magplus_jax.models.flow import lucas_kanade

Array = jax.Array

BLUR_SIGMAS = (0.0, 2.0, 4.0, 8.0)  # 0 = the raw estimate
GAIN_MAX = 2.0
HEAD_CHANNELS = len(BLUR_SIGMAS) + 1  # mixture logits + gain logit
FIXED_POINT_ITERS = 5
# Input channels the network reads besides [I_ref, I_t, alpha encoding]: log2(alpha) / 8 and
# alpha x each scale's motion / FEATURE_PX (two channels per scale).
EXTRA_CHANNELS = 1 + 2 * len(BLUR_SIGMAS)
FEATURE_PX = 8.0
GATE_PX = 6.0      # expected magnified error (px) at which a scale's estimate is cut to e^-1
GATE_SIGMA = 4.0   # local averaging of |m_s|^2 and v_s
_NULL_SEED = 0x9A7E  # the null pair's noise draw: fixed, so the magnifier is a function
_LAPLACE_DIFF = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], np.float32)


def _blurs(flow: Array) -> Array:
  outs = [flow if s == 0 else lucas_kanade.gaussian_blur(flow, s) for s in BLUR_SIGMAS]
  return jnp.stack(outs, axis=-1)


def noise_std(ref: Array, frame: Array) -> Array:
  """[B] per-frame noise std (intensity units) from the grey difference (Immerkaer 1996)."""
  d = jnp.mean(frame - ref, axis=-1)[..., None]
  k = jnp.asarray(_LAPLACE_DIFF)[:, :, None, None]
  lap = jax.lax.conv_general_dilated(d, k, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # E|N * n| = 6 sqrt(2 / pi) std(n) for white n; the grey mean of 3 channels divides the
  # difference's std by sqrt(3) and the difference of two frames multiplies it by sqrt(2).
  return jnp.mean(jnp.abs(lap), axis=(1, 2, 3)) * np.sqrt(np.pi / 2) / 6 * np.sqrt(1.5)


def gate(scales: Array, null: Array, alpha: Array) -> Array:
  """[B, H, W, 1, S] reliability of each scale (module doc); alpha [B, H, W]."""
  def local(x):  # [B, H, W, S] -> same, blurred
    return lucas_kanade.gaussian_blur(x, GATE_SIGMA)
  m2 = local(jnp.sum(scales ** 2, axis=-2))
  # One null draw is one realisation, and a smooth (coarse-scale) realisation has few independent
  # samples: it can be quiet where the real estimate is not. So the local shape of the variance
  # comes from the finest null (many samples) and each scale's level from its image-wide ratio.
  n2 = jnp.sum(null ** 2, axis=-2)
  ratio = jnp.mean(n2, axis=(1, 2), keepdims=True) / (
      jnp.mean(n2[..., :1], axis=(1, 2), keepdims=True) + 1e-20)
  v = local(n2[..., :1]) * ratio
  a2 = (alpha[..., None] ** 2).astype(v.dtype)
  c = m2 / (m2 + 2.0 * v + 1e-12) * jnp.exp(-jnp.square(a2 * v / GATE_PX ** 2))
  return c[..., None, :]


def motion_scales(ref: Array, frame: Array, alpha: Array) -> Array:
  """[B, H, W, 3] x 2, alpha [B, H, W] -> [B, H, W, 2, S]: the weight-free flow ref -> frame,
  its blurs, each gated by its reliability at alpha. No gradient flows into it."""
  ref, frame = jax.lax.stop_gradient(ref), jax.lax.stop_gradient(frame)
  scales = _blurs(lucas_kanade.pyramid_lk(ref, frame))
  eps = jax.random.normal(jax.random.key(_NULL_SEED), ref.shape, ref.dtype)
  sigma = np.sqrt(2.0) * noise_std(ref, frame)[:, None, None, None]
  null = _blurs(lucas_kanade.pyramid_lk(ref, jnp.clip(ref + sigma * eps, 0.0, 1.0)))
  return jax.lax.stop_gradient(scales * gate(scales, null, alpha))


def features(scales: Array, alpha: Array) -> Array:
  """The extra network inputs [B, H, W, EXTRA_CHANNELS]; alpha [B, H, W]."""
  b, h, w = scales.shape[:3]
  a = alpha[..., None]
  mag = (scales * a[..., None] / FEATURE_PX).reshape(b, h, w, -1)
  return jnp.concatenate([jnp.log2(a) / 8.0, mag], axis=-1).astype(scales.dtype)


def combine(head: Array, scales: Array) -> Array:
  """head [B, H, W, HEAD_CHANNELS], scales [B, H, W, 2, S] -> the motion f [B, H, W, 2]."""
  w = jax.nn.softmax(head[..., :len(BLUR_SIGMAS)], axis=-1)
  gain = GAIN_MAX * jax.nn.sigmoid(head[..., -1:])
  return gain * jnp.sum(scales * w[..., None, :], axis=-1)


def _clamped(pos: Array, h: int, w: int) -> Array:
  return jnp.stack([jnp.clip(pos[..., 0], 0.0, w - 1.0), jnp.clip(pos[..., 1], 0.0, h - 1.0)], -1)


def sample_at(image: Array, pos: Array) -> Array:
  """image [B, H, W, C] at pixel positions pos [B, H, W, 2], clamped into the image."""
  h, w = image.shape[1:3]
  pos = _clamped(pos, h, w)
  return resample.sample_pixels(image, pos[..., 0], pos[..., 1])


def parts(ref: Array, frame: Array, motion: Array, alpha: Array) -> tuple[Array, Array]:
  """(I_t moved to the magnified positions, I_ref moved there): steps 3-4 of the module doc before
  the blend. Each alone is first-order sensitive to an error of f, where their blend for
  alpha < 1 is not (its point): losses.parts_loss scores them to pin f down in training."""
  h, w = frame.shape[1:3]
  grid = resample.pixel_grid(h, w, motion.dtype)[None]
  a = alpha[..., None].astype(motion.dtype)
  f_at_p = motion
  for _ in range(FIXED_POINT_ITERS):  # p = q - alpha f(p)
    f_at_p = sample_at(motion, grid - a * f_at_p)
  return sample_at(frame, grid - (a - 1.0) * f_at_p), sample_at(ref, grid - a * f_at_p)


def blend(moved: Array, ref_moved: Array, alpha: Array) -> Array:
  """The output from the two parts: the moved I_t, blended towards the moved I_ref by 1 - alpha
  for alpha < 1 (0 for alpha >= 1: MagPlus never reads I_ref's pixels)."""
  lam = jnp.clip(1.0 - alpha[..., None].astype(moved.dtype), 0.0, 1.0)
  return moved + lam * (ref_moved - moved)


def magnify(ref: Array, frame: Array, motion: Array, alpha: Array) -> Array:
  """Steps 3-4 of the module doc. ref, frame [B, H, W, 3], motion f [B, H, W, 2], alpha [B, H, W]."""
  return blend(*parts(ref, frame, motion, alpha), alpha)
