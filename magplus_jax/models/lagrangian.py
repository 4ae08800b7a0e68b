"""The Lagrangian output of the MagPlus network: move the pixels of I_t, do not scale I_t - I_ref.

Why: Eulerian forms (I_t + (alpha - 1) * g * (I_t - I_ref)) are linear magnification by
construction; they ghost once alpha x motion exceeds the texture scale and amplify noise with the
motion. Oh et al.'s protocol magnifies 0.04 px to 10 px: only a method that displaces pixels gets
there (measured at 64 px, no network: SSIM 0.95 for flow-and-warp vs 0.70 for phase-based YIQ).

The form (all pixel units, (x, y)):
  1. motion features: m = F0(I_ref, I_t), the weight-free coarse-to-fine Lucas-Kanade of
     models/flow (no gradient, no weights), and its Gaussian blurs at BLUR_SIGMAS;
  2. the network reads [I_ref, I_t, alpha encoding, log alpha, alpha * features] and predicts per
     pixel a convex mixture over the scales (softmax) and a gain in (0, GAIN_MAX):
     f = gain * sum_s w_s * blur_s(m). This is where learning acts: how much to smooth where
     (noise and aperture), how far to trust the estimate at this alpha (at high noise the right
     answer is to move nothing), which F0 cannot know;
  3. the magnified position of the scene point p is p + alpha f(p); the output at q shows the point
     p(q) with p + alpha f(p) = q, found by fixed-point iteration (a contraction wherever
     alpha |grad f| < 1: the fields the magnifier is trained on are fold-free);
  4. out(q) = I_t(q - (alpha - 1) f(p(q))), bilinear through resample.sample_pixels, positions
     clamped into the frame (edge replication: no black borders where content enters).
Properties by construction, for any weights: alpha = 1 returns I_t exactly (zero displacement);
I_t = I_ref gives F0 = 0 exactly, hence f = 0 and a still output (static in => static out); an
alpha map of 1 leaves those pixels untouched; alpha < 1 (DeMagPlus) uses the same expression.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

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


def motion_scales(ref: Array, frame: Array) -> Array:
  """[B, H, W, 3] x 2 -> [B, H, W, 2, S]: the weight-free flow ref -> frame and its blurs."""
  flow = jax.lax.stop_gradient(lucas_kanade.pyramid_lk(ref, frame))
  outs = [flow if s == 0 else lucas_kanade.gaussian_blur(flow, s) for s in BLUR_SIGMAS]
  return jnp.stack(outs, axis=-1)


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


def magnify(frame: Array, motion: Array, alpha: Array) -> Array:
  """Steps 3-4 of the module doc. frame [B, H, W, 3], motion f [B, H, W, 2], alpha [B, H, W]."""
  h, w = frame.shape[1:3]
  grid = resample.pixel_grid(h, w, motion.dtype)[None]
  a = alpha[..., None].astype(motion.dtype)
  f_at_p = motion
  for _ in range(FIXED_POINT_ITERS):  # p = q - alpha f(p)
    f_at_p = sample_at(motion, grid - a * f_at_p)
  return sample_at(frame, grid - (a - 1.0) * f_at_p)
