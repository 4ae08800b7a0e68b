"""Classical motion magnification baselines behind the project's magnifier interface.

Two methods, chosen by `magnifier_config.name`:
  * "eulerian": linear Eulerian magnification (Wu et al. 2012), `classical_eulerian.py`.
  * "phase":    phase-based magnification (Wadhwa et al. 2013), `classical_phase.py`.

Both follow the interface of `magnifiers.py`: `magnify_clip(params, frames [B, T, H, W, 3] in
[0, 1], alpha [B] or [B, T, H, W]) -> [B, T, H, W, 3]`, motion magnified relative to frame 0, and
alpha is the *motion* factor (output motion = alpha x input motion; alpha = 1 is the identity,
alpha < 1 attenuates). The papers' own "alpha" is the added amount, i.e. theirs = ours - 1.

This module holds what both methods share: the YIQ colour transform, the temporal filters, alpha
handling and validation, and the `build` entry point.

Temporal filter (config field `temporal_filter`), applied to the signal relative to frame 0:
  * "reference" (default): x_t - x_0. No temporal assumption; works on two-frame clips and is what
    the static-magnification protocol (Oh et al. 2018, FlowMag) needs. Output frame 0 = input
    frame 0.
  * "butterworth": first-order Butterworth band-pass [fl, fh] Hz at `fps` (difference of two
    first-order low-passes, as in Wu et al.'s released code), causal, its state started at frame 0,
    so output frame 0 = input frame 0 and a static clip stays static.
  * "ideal": FFT along time, keep fl <= |f| <= fh. Non-causal; it removes each pixel's temporal
    mean, so output frame 0 is generally *not* the input frame 0 (use it for real videos, not for
    pairs).

Config fields shared by both methods (read with `.get`, defaults in brackets):
  temporal_filter ["reference"], fl [0.4] Hz, fh [3.0] Hz, fps [30.0].
Method-specific fields are documented in each method's module.

Validation: alpha must be finite and > 0. `magnify_clip` checks it when called with concrete arrays
and raises ValueError; inside an outer `jax.jit` alpha is a tracer, cannot be inspected, and the
caller is responsible for validating it.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from magplus_jax.models import resample
from magplus_jax.models.magnifiers import Magnifier, broadcast_alpha

Array = jax.Array

TEMPORAL_FILTERS = ("reference", "butterworth", "ideal")

# NTSC RGB -> YIQ; the inverse is computed, so the round trip is exact to float precision.
_RGB2YIQ = np.array([[0.299, 0.587, 0.114],
                     [0.595716, -0.274453, -0.321263],
                     [0.211456, -0.522591, 0.311135]], np.float64)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def rgb_to_yiq(rgb: Array) -> Array:
  """[..., 3] RGB -> [..., 3] YIQ. Luminance and chrominance separate so that chroma can be
  attenuated (Eulerian) or passed through untouched (phase-based, luma mode)."""
  return rgb @ jnp.asarray(_RGB2YIQ.T, rgb.dtype)


def yiq_to_rgb(yiq: Array) -> Array:
  return yiq @ jnp.asarray(_YIQ2RGB.T, yiq.dtype)


# ----------------------------------------------------------------------------------------------
# Temporal filtering (time is axis 1 of [B, T, ...])


def _butter1_lowpass_coeffs(fc: float, fs: float) -> tuple[float, float]:
  """First-order digital Butterworth low-pass (bilinear transform, pre-warped): y = b0 (x + x[-1])
  - a1 y[-1]. Same coefficients as scipy.signal.butter(1, 2 fc / fs)."""
  k = math.tan(math.pi * fc / fs)
  return k / (1.0 + k), (k - 1.0) / (k + 1.0)


def _butterworth_bandpass(x: Array, fl: float, fh: float, fps: float) -> Array:
  """Difference of two first-order low-passes (cut-offs fh and fl); filter state starts at frame 0
  as if the clip had been still before it, so the response at t = 0 is exactly zero."""
  bh, ah = _butter1_lowpass_coeffs(fh, fps)
  bl, al = _butter1_lowpass_coeffs(fl, fps)
  xt = jnp.moveaxis(x, 1, 0)
  x0 = xt[0]

  def step(carry, xi):
    x_prev, y_hi, y_lo = carry
    y_hi = bh * (xi + x_prev) - ah * y_hi
    y_lo = bl * (xi + x_prev) - al * y_lo
    return (xi, y_hi, y_lo), y_hi - y_lo

  _, out = jax.lax.scan(step, (x0, x0, x0), xt)
  return jnp.moveaxis(out, 0, 1)


def _ideal_bandpass(x: Array, fl: float, fh: float, fps: float) -> Array:
  t = x.shape[1]
  freqs = np.abs(np.fft.fftfreq(t, d=1.0 / fps))
  mask = ((freqs >= fl) & (freqs <= fh)).astype(np.float32)
  mask = jnp.asarray(mask).reshape((1, t) + (1,) * (x.ndim - 2))
  spec = jnp.fft.fft(x - x[:, :1], axis=1)
  return jnp.real(jnp.fft.ifft(spec * mask, axis=1)).astype(x.dtype)


def temporal_filter(x: Array, kind: str, fl: float, fh: float, fps: float) -> Array:
  """The motion signal of x [B, T, ...] relative to frame 0 (see the module docstring)."""
  if kind == "reference":
    return x - x[:, :1]
  if kind == "butterworth":
    return _butterworth_bandpass(x, fl, fh, fps)
  if kind == "ideal":
    return _ideal_bandpass(x, fl, fh, fps)
  raise ValueError(f"temporal_filter {kind!r} is unknown; choose one of {TEMPORAL_FILTERS}")


def temporal_config(cfg) -> dict:
  """Reads and checks the temporal-filter fields once, at build time."""
  kind = cfg.get("temporal_filter", "reference")
  fl = float(cfg.get("fl", 0.4))
  fh = float(cfg.get("fh", 3.0))
  fps = float(cfg.get("fps", 30.0))
  if kind not in TEMPORAL_FILTERS:
    raise ValueError(f"temporal_filter {kind!r} is unknown; choose one of {TEMPORAL_FILTERS}")
  if kind != "reference" and not (0.0 < fl < fh < fps / 2.0):
    raise ValueError(f"temporal band [fl, fh] = [{fl}, {fh}] Hz must satisfy 0 < fl < fh < fps/2 "
                     f"(fps = {fps})")
  return dict(kind=kind, fl=fl, fh=fh, fps=fps)


# ----------------------------------------------------------------------------------------------
# alpha


def alpha_map(alpha: Array, frames: Array) -> Array:
  """alpha [B] or [B, T, H, W] -> [B, 1, 1, 1, 1] or [B, T, H, W, 1]."""
  return broadcast_alpha(alpha, frames)


def alpha_at(alpha5: Array, size: tuple[int, int]) -> Array:
  """alpha5 from `alpha_map` at a pyramid level's resolution (h, w): scalars broadcast as they are,
  per-pixel maps are resized bilinearly."""
  b, t, h, w, _ = alpha5.shape
  if (h, w) == (1, 1) or (h, w) == tuple(size):
    return alpha5
  flat = resample.resize_bilinear(alpha5.reshape(b * t, h, w, 1), size)
  return flat.reshape(b, t, size[0], size[1], 1)


def check_inputs(frames, alpha) -> None:
  """Shape checks always; value checks on alpha only when it is concrete (not a jit tracer)."""
  if frames.ndim != 5 or frames.shape[-1] != 3:
    raise ValueError(f"frames must be [B, T, H, W, 3]; got shape {tuple(frames.shape)}")
  b, t, h, w, _ = frames.shape
  if alpha.ndim == 1:
    if alpha.shape[0] != b:
      raise ValueError(f"alpha [B] must have B = {b} entries; got shape {tuple(alpha.shape)}")
  elif alpha.ndim == 4:
    if tuple(alpha.shape) != (b, t, h, w):
      raise ValueError(f"per-pixel alpha must be [B, T, H, W] = {(b, t, h, w)}; "
                       f"got shape {tuple(alpha.shape)}")
  else:
    raise ValueError(f"alpha must be [B] or [B, T, H, W]; got shape {tuple(alpha.shape)}")
  if isinstance(alpha, jax.core.Tracer):
    return
  values = np.asarray(alpha)
  if not np.all(np.isfinite(values)):
    raise ValueError("alpha must be finite; got NaN or inf")
  if not np.all(values > 0):
    raise ValueError(f"alpha must be > 0 (1 = no magnification); got min {values.min()}")


def make_magnifier(name: str, core) -> Magnifier:
  """Wraps a pure `core(frames, alpha) -> frames` into a Magnifier with a jitted body."""
  jitted = jax.jit(core)

  def magnify_clip(params, frames, alpha):
    del params  # classical methods have no learned parameters
    frames = jnp.asarray(frames, jnp.float32)
    alpha = jnp.asarray(alpha, jnp.float32)
    check_inputs(frames, alpha)
    return jitted(frames, alpha)

  return Magnifier(name, {}, magnify_clip)


def build(magnifier_config) -> Magnifier:
  """Magnifier for magnifier_config.name in {"eulerian", "phase"}."""
  name = magnifier_config.get("name")
  if name == "eulerian":
    from magplus_jax.models import classical_eulerian
    return classical_eulerian.build(magnifier_config)
  if name == "phase":
    from magplus_jax.models import classical_phase
    return classical_phase.build(magnifier_config)
  raise ValueError(f"classical magnifier name {name!r} is unknown; choose 'eulerian' or 'phase'")
