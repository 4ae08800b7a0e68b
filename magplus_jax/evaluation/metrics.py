"""Scores for magnifiers and generated videos, pure JAX (jit-able, batched).

Motion is always measured with the project's flow interface (`FlowEstimator`), relative to the
reference (first) frame, so a magnifier is judged by what it does to motion, not to pixels.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# Below this input motion (px) the magnitude ratio is undefined noise; mag_error ignores such pixels.
MOVING_PX = 0.05


def motion_error(flow_pred: Array, flow_in: Array, alpha: Array) -> Array:
  """Mean L1 between the output's flow and alpha x the input's flow. flows [B,H,W,2]; alpha [B]|[B,H,W]."""
  a = alpha[:, None, None, None] if alpha.ndim == 1 else alpha[..., None]
  return jnp.mean(jnp.abs(flow_pred - a * flow_in))


def magnification_ratio(flow_pred: Array, flow_in: Array, moving_px: float = MOVING_PX):
  """(mean of |F(I0, pred)| / |F(I0, It)| over moving pixels, fraction of moving pixels)."""
  mag_in = jnp.linalg.norm(flow_in, axis=-1)
  mag_pred = jnp.linalg.norm(flow_pred, axis=-1)
  moving = mag_in > moving_px
  ratio = mag_pred / jnp.maximum(mag_in, moving_px)
  n = jnp.maximum(moving.sum(), 1)
  return jnp.where(moving, ratio, 0.0).sum() / n, moving.mean()


def mag_error(flow_pred: Array, flow_in: Array, alpha: Array, moving_px: float = MOVING_PX) -> Array:
  """Mean relative error |ratio - alpha| / alpha of the measured magnification, over moving pixels."""
  mag_in = jnp.linalg.norm(flow_in, axis=-1)
  mag_pred = jnp.linalg.norm(flow_pred, axis=-1)
  a = alpha[:, None, None] if alpha.ndim == 1 else alpha
  moving = mag_in > moving_px
  rel = jnp.abs(mag_pred / jnp.maximum(mag_in, moving_px) - a) / a
  return jnp.where(moving, rel, 0.0).sum() / jnp.maximum(moving.sum(), 1)


def psnr(x: Array, y: Array, border: int = 0) -> Array:
  """Mean PSNR (dB) over the batch for images in [0, 1]; [B, H, W, C]."""
  if border:
    x, y = x[:, border:-border, border:-border], y[:, border:-border, border:-border]
  mse = jnp.mean((x - y) ** 2, axis=(1, 2, 3))
  return jnp.mean(10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-12)))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Array:
  r = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
  g = jnp.exp(-(r ** 2) / (2 * sigma ** 2))
  return g / g.sum()


def _filter_valid(x: Array, g: Array) -> Array:
  """Separable 'valid' Gaussian filter over H and W of [B, H, W, C]."""
  k = g.shape[0]
  c = x.shape[-1]
  kh = jnp.tile(g.reshape(k, 1, 1, 1), (1, 1, 1, c))
  kw = jnp.tile(g.reshape(1, k, 1, 1), (1, 1, 1, c))
  dn = ("NHWC", "HWIO", "NHWC")
  x = jax.lax.conv_general_dilated(x, kh, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)
  return jax.lax.conv_general_dilated(x, kw, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)


def ssim(x: Array, y: Array, border: int = 0, data_range: float = 1.0) -> Array:
  """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) over the batch.

  Computed per channel and averaged, on [B, H, W, C]; `border` pixels are cropped first (the
  synthetic magnification protocol crops 8).
  """
  if border:
    x, y = x[:, border:-border, border:-border], y[:, border:-border, border:-border]
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  g = _gaussian_window()
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  mx, my = _filter_valid(x, g), _filter_valid(y, g)
  sxx = _filter_valid(x * x, g) - mx ** 2
  syy = _filter_valid(y * y, g) - my ** 2
  sxy = _filter_valid(x * y, g) - mx * my
  s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
  return jnp.mean(s)


def intensity_curve(flows: Array, percentile: float = 95.0) -> tuple[Array, Array]:
  """flows [T, H, W, 2] relative to frame 0 -> (mean, percentile) flow magnitude per frame, [T] each."""
  mag = jnp.linalg.norm(flows, axis=-1).reshape(flows.shape[0], -1)
  return mag.mean(axis=1), jnp.percentile(mag, percentile, axis=1)
