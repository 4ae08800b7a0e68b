"""Phase-based video magnification (Wadhwa et al., SIGGRAPH 2013) in JAX.

Pipeline per clip: RGB -> YIQ; the luminance (or all three channels, `color_mode="yiq"`) is split by
a complex steerable pyramid; in every oriented band the local phase difference to frame 0 is
temporally filtered (see `classical.py`), optionally smoothed with an amplitude-weighted Gaussian,
limited against phase wrapping, multiplied by (alpha - 1) and added to the band's phase; the bands
are recombined, YIQ -> RGB, clip to [0, 1]. The high- and low-pass residuals are passed through.

The pyramid is built in the Fourier domain (jnp.fft): filters on the full frame's frequency grid,
each scale then sampled on a coarser grid that still holds its filters' support (a crop of the
spectrum, so no information is lost for any H, W): by default the finest octave at full and all
coarser scales at 1/2 resolution (`max_grids`, a compile-time / run-time trade-off, see
`scale_grid`). Per-pixel alpha maps are resized to each grid with `resample.resize_bilinear`.
Boundaries are periodic, as in the FFT-based reference code.

Filters. Radial: raised-cosine transitions in log2(radius), `bands_per_octave` bands per octave
(1 = octave, 2 = half-octave pyramid), each transition one band wide and non-overlapping with its
neighbours, so that hi0^2 + sum_s band_s^2 + lo^2 = 1 (a tight frame). The first transition ends at
radius pi: the high-pass residual holds only the corners of the spectrum, and every self-mirrored
Nyquist bin is entirely residual. Angular: a cos^(n-1) lobe on one half-plane per orientation
(complex, analytic bands), scaled so that the two half-planes together sum to 2, which makes
Re(sum_b ifft(fft(band_b) * filter_b)) reproduce the image exactly.

Phase wrapping: a band can only express a phase shift up to +-pi (half its wavelength); beyond
that, exp(i * alpha * dphi) wraps around. With `phase_limit` > 0 the magnified phase difference
alpha * dphi is clamped to [-max(phase_limit, |dphi|), +max(phase_limit, |dphi|)] instead (an
adaptive form of the paper's attenuation of the bands that break its bound), so an aliasing band
moves by at most phase_limit / (2 pi) of its wavelength. It is off by default because, measured on
the synthetic protocol (64 px, 10 px magnified motion; synthetic_protocol.py), every limit tried
lowered SSIM (no limit 0.716, 4 pi 0.714, 2 pi 0.700, pi 0.662, pi/2 0.600; zeroing or fading the
aliasing bands instead was worse still): for narrow-band content a wrapped phase is the same
signal as the unwrapped one, so the wrap is closer to the truth than any clamp.

Config fields (`.get`, defaults in brackets):
  octaves [0]: octaves covered by the oriented bands (band s peaks near wavelength
    4 x 2^(s / bands_per_octave) px); 0 = ceil(log2(min(H, W))) - 1, see `auto_octaves`.
  bands_per_octave [1]: 1 (octave) or 2 (half-octave) or more.
  orientations [4]: oriented bands per scale (the paper uses 4 for octave, 8 for half-octave).
  sigma [0.0]: amplitude-weighted Gaussian smoothing of the phase, in pixels of the finest band,
    scaled with each band's wavelength (2^(s / bands_per_octave)); 0 disables it.
  phase_limit [0.0]: wrap limit above, in radians (e.g. pi); 0 disables it.
  max_grids [2]: distinct sampling grids of the scales (full, 1/2, ...), see `scale_grid`.
  color_mode ["luma"]: "luma" magnifies Y and passes I, Q of each frame through (the paper's
    choice); "yiq" magnifies all three channels (colour edges move with luminance).
  plus the temporal fields of `classical.py`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from magplus_jax.models import classical
from magplus_jax.models.magnifiers import Magnifier

Array = jax.Array

COLOR_MODES = ("luma", "yiq")


def _lowpass(log2r: np.ndarray, log2c: float, width: float) -> np.ndarray:
  """Raised-cosine low-pass: 1 below log2c - width/2, 0 above log2c + width/2."""
  t = np.clip((log2r - log2c) / width, -0.5, 0.5)
  return np.cos(0.5 * np.pi * (t + 0.5))


def _angular_norm(n: int) -> float:
  """sum_k cos^(2(n-1))(theta - pi k / n) = n C(2n-2, n-1) / 4^(n-1), independent of theta."""
  return n * math.comb(2 * n - 2, n - 1) / 4.0 ** (n - 1)


def auto_octaves(h: int, w: int) -> int:
  """Enough octaves for the coarsest band's peak wavelength (2^(octaves + 1) px) to reach the image
  size. Wadhwa et al.'s code stops two octaves earlier; then structure of wavelength above ~1/4
  of the frame stays in the (unmagnified) low-pass residual, which measurably hurts on smooth
  content (tests/test_classical.py textures: L1 error 0.18 -> 0.35-0.6 of the identity's)."""
  return max(1, int(math.ceil(math.log2(max(min(h, w), 2)))) - 1)


def steerable_filters(h: int, w: int, octaves: int, bands_per_octave: int,
                      orientations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Fourier-domain filters on numpy's fft grid.

  Returns (oriented [S * K, H, W] for S = octaves * bands_per_octave scales and K orientations,
  scale index [S * K] (finest = 0), residual [H, W] = hi0^2 + lo^2, the pass-through part).
  """
  fy = 2 * np.pi * np.fft.fftfreq(h)[:, None]
  fx = 2 * np.pi * np.fft.fftfreq(w)[None, :]
  r = np.sqrt(fx ** 2 + fy ** 2)
  theta = np.arctan2(fy, fx)
  log2r = np.log2(np.maximum(r, 1e-12))
  width = 1.0 / bands_per_octave
  n_scales = octaves * bands_per_octave
  cut = [np.log2(np.pi) - width / 2 - s * width for s in range(n_scales + 1)]
  lows = [_lowpass(log2r, c, width) for c in cut]
  hi0 = np.sqrt(1.0 - lows[0] ** 2)
  gain = math.sqrt(2.0 / _angular_norm(orientations))
  angular = []
  for k in range(orientations):
    c = np.cos(theta - np.pi * k / orientations)
    angular.append(np.where(c > 0, gain * np.abs(c) ** (orientations - 1), 0.0))
  bands, scale_index = [], []
  for s in range(n_scales):
    radial = lows[s] * np.sqrt(1.0 - lows[s + 1] ** 2)
    for k in range(orientations):
      bands.append(radial * angular[k])
      scale_index.append(s)
  residual = hi0 ** 2 + lows[-1] ** 2
  return (np.stack(bands).astype(np.float32), np.asarray(scale_index, np.int32),
          residual.astype(np.float32))


def _gaussian_transfer(h: int, w: int, sigma: float) -> np.ndarray:
  fy = 2 * np.pi * np.fft.fftfreq(h)[:, None]
  fx = 2 * np.pi * np.fft.fftfreq(w)[None, :]
  return np.exp(-0.5 * sigma ** 2 * (fx ** 2 + fy ** 2)).astype(np.float32)


def _crop(x: Array, axis: int, m: int) -> Array:
  """The m lowest-frequency bins of an fft axis, in m-point fft order (slices, not a gather: XLA
  compiles gathers / scatters over many scales slowly)."""
  n = x.shape[axis]
  if m == n:
    return x
  lo, hi = (m + 1) // 2, m // 2
  parts = [jax.lax.slice_in_dim(x, 0, lo, axis=axis)]
  if hi:
    parts.append(jax.lax.slice_in_dim(x, n - hi, n, axis=axis))
  return jnp.concatenate(parts, axis=axis)


def _uncrop(x: Array, axis: int, n: int) -> Array:
  """Inverse of `_crop`: zeros in the bins that were cut."""
  m = x.shape[axis]
  if m == n:
    return x
  lo, hi = (m + 1) // 2, m // 2
  zeros_shape = list(x.shape)
  zeros_shape[axis] = n - m
  return jnp.concatenate([jax.lax.slice_in_dim(x, 0, lo, axis=axis),
                          jnp.zeros(zeros_shape, x.dtype),
                          jax.lax.slice_in_dim(x, lo, m, axis=axis)], axis=axis)


def _crop_bins(n: int, m: int) -> np.ndarray:
  """Indices into an n-point fft grid of the bins `_crop` keeps (for the filters, in numpy)."""
  return np.round(np.fft.fftfreq(m) * m).astype(np.int64) % n


def scale_grid(h: int, w: int, scale: int, bands_per_octave: int,
               max_grids: int = 2) -> tuple[int, int]:
  """Grid (h', w') on which scale `scale` is sampled without loss: its filters vanish for radius
  >= pi / 2^(scale / bands_per_octave), so every nonzero bin has |k| < h' / 2 (a Fourier-domain
  crop, as in Portilla and Simoncelli's pyramid), in whole octaves, at most max_grids - 1 of them.

  Why a cap: every distinct grid is one more compile of the band loop (measured on a busy 2-core
  CPU, 64 px: 1.6 s for 1 grid, 3.5 s for 2, 4 s for 3), while the run time is dominated by the
  finest grid (256 px, 8 frames: ~300, ~120, ~100 ms/frame for 1, 2, 3 grids).
  """
  f = 2 ** min(scale // bands_per_octave, max(max_grids, 1) - 1)
  return -(-h // f), -(-w // f)


def phase_magnify_channels(x: Array, alpha: Array, *, octaves: int = 0, bands_per_octave: int = 1,
                           orientations: int = 4, sigma: float = 0.0,
                           phase_limit: float = 0.0, max_grids: int = 2,
                           temporal: dict | None = None) -> Array:
  """x [B, T, H, W] real, alpha [B, 1, 1, 1, 1] or [B, T, H, W, 1] -> magnified x [B, T, H, W].

  Bands are grouped by their grid (`scale_grid`) and each group runs as one lax.scan over its
  bands; the per-pixel alpha map is resized to each grid with resize_bilinear.
  """
  temporal = temporal or dict(kind="reference", fl=0.4, fh=3.0, fps=30.0)
  _, _, h, w = x.shape
  octaves = octaves or auto_octaves(h, w)
  filters, scale_index, residual = steerable_filters(h, w, octaves, bands_per_octave,
                                                     orientations)
  spectrum = jnp.fft.fft2(x)
  out_spec = spectrum * residual
  grids = [scale_grid(h, w, int(si), bands_per_octave, max_grids) for si in scale_index]
  for hs, ws in sorted(set(grids), reverse=True):
    members = np.array([g == (hs, ws) for g in grids])
    rows, cols = _crop_bins(h, hs), _crop_bins(w, ws)
    full = filters[members]                                                # [n, H, W]
    outside = np.ones((h, w), bool)
    outside[np.ix_(rows, cols)] = False
    energy = full.astype(np.float64) ** 2
    assert energy[:, outside].sum() <= 1e-9 * energy.sum(), f"grid {(hs, ws)} loses energy"
    filt = full[:, rows][:, :, cols]                                       # [n, hs, ws]
    if sigma > 0:
      # sigma is in pixels of the finest band, scaled with each band's wavelength, then
      # expressed in steps of this grid (h / hs pixels).
      blurs = np.stack([_gaussian_transfer(hs, ws, sigma * 2.0 ** (si / bands_per_octave) * hs / h)
                        for si in scale_index[members]])
    else:
      blurs = np.ones((len(filt), 1, 1), np.float32)
    spec_s = _crop(_crop(spectrum, 2, hs), 3, ws)                          # [B, T, hs, ws]
    gain = classical.alpha_at(alpha, (hs, ws))[..., 0] - 1.0                # [B, T|1, hs|1, ws|1]

    def one_band(acc, xs, spec_s=spec_s, gain=gain):
      f, blur = xs
      band = jnp.fft.ifft2(spec_s * f)
      dphi = jnp.angle(band * jnp.conj(band[:, :1]))
      dphi = classical.temporal_filter(dphi, **temporal)
      if sigma > 0:
        amp = jnp.abs(band[:, :1]) + 1e-6
        smooth = jnp.fft.ifft2(jnp.fft.fft2(amp * dphi + 1j * amp) * blur)
        dphi = jnp.real(smooth) / jnp.imag(smooth)
      shift = gain * dphi
      if phase_limit > 0:
        cap = jnp.maximum(phase_limit, jnp.abs(dphi))
        shift = jnp.clip(dphi + shift, -cap, cap) - dphi
      return acc + jnp.fft.fft2(band * jnp.exp(1j * shift)) * f, None

    acc, _ = jax.lax.scan(one_band, jnp.zeros_like(spec_s), (jnp.asarray(filt), jnp.asarray(blurs)))
    out_spec = out_spec + _uncrop(_uncrop(acc, 2, h), 3, w)
  return jnp.real(jnp.fft.ifft2(out_spec)).astype(x.dtype)


def phase_magnify(frames: Array, alpha: Array, *, color_mode: str = "luma", **kwargs) -> Array:
  """frames [B, T, H, W, 3] in [0, 1], alpha [B] or [B, T, H, W] -> [B, T, H, W, 3]."""
  yiq = classical.rgb_to_yiq(frames)
  alpha5 = classical.alpha_map(alpha, frames)
  if color_mode == "luma":
    y = phase_magnify_channels(yiq[..., 0], alpha5, **kwargs)
    out = jnp.concatenate([y[..., None], yiq[..., 1:]], axis=-1)
  else:
    chans = jnp.moveaxis(yiq, -1, 0)
    b, t, h, w = chans.shape[1:]
    stacked = chans.reshape(3 * b, t, h, w)
    alpha_rep = jnp.concatenate([alpha5] * 3, axis=0)
    out = phase_magnify_channels(stacked, alpha_rep, **kwargs)
    out = jnp.moveaxis(out.reshape(3, b, t, h, w), 0, -1)
  return jnp.clip(classical.yiq_to_rgb(out), 0.0, 1.0)


def build(cfg) -> Magnifier:
  color_mode = cfg.get("color_mode", "luma")
  if color_mode not in COLOR_MODES:
    raise ValueError(f"phase color_mode {color_mode!r} is unknown; choose one of {COLOR_MODES}")
  kwargs = dict(octaves=int(cfg.get("octaves", 0)),
                bands_per_octave=int(cfg.get("bands_per_octave", 1)),
                orientations=int(cfg.get("orientations", 4)),
                sigma=float(cfg.get("sigma", 0.0)),
                phase_limit=float(cfg.get("phase_limit", 0.0)),
                max_grids=int(cfg.get("max_grids", 2)),
                temporal=classical.temporal_config(cfg))
  if kwargs["bands_per_octave"] < 1:
    raise ValueError(f"phase bands_per_octave must be >= 1; got {kwargs['bands_per_octave']}")
  if kwargs["orientations"] < 2:
    # One orientation would need a half-plane split that breaks ties on the vertical axis.
    raise ValueError(f"phase orientations must be >= 2; got {kwargs['orientations']}")
  if kwargs["octaves"] < 0 or kwargs["sigma"] < 0 or kwargs["phase_limit"] < 0:
    raise ValueError("phase octaves, sigma and phase_limit must be >= 0")
  if kwargs["max_grids"] < 1:
    raise ValueError(f"phase max_grids must be >= 1; got {kwargs['max_grids']}")

  def core(frames, alpha):
    return phase_magnify(frames, alpha, color_mode=color_mode, **kwargs)

  return classical.make_magnifier("phase", core)
