"""Linear Eulerian video magnification (Wu et al., SIGGRAPH 2012) in JAX.

Pipeline per clip: RGB -> YIQ, temporal filter of the signal relative to frame 0 (see
`classical.py`), Laplacian pyramid, each level amplified by its own factor, collapse, add to the
input frame, YIQ -> RGB, clip to [0, 1].

The filters commute: the temporal filters are linear and per pixel, the Laplacian pyramid is linear
and per frame, so filtering the frames first and decomposing the filtered signal once gives the same
result as the paper's "decompose each frame, filter each level" at a fraction of the cost.

Why per-level factors: the linear approximation I(x + (1 + a) d) ~ I(x) + (1 + a) d I'(x) only holds
when (1 + a) d < lambda / 8 for spatial wavelength lambda (paper, Sec. 3.2). Given the cut-off
wavelength lambda_c at which the full amplification a is still wanted, the implied largest motion is
d = lambda_c / (8 (1 + a)); a level of representative wavelength lambda_l then gets
a_l = clip(min(a, exaggeration * (lambda_l / (8 d) - 1)), 0) = clip(min(a, exaggeration *
((1 + a) lambda_l / lambda_c - 1)), 0): full amplification for wavelengths >= lambda_c, a linear
ramp to 0 below. Here a = alpha - 1 in the project's convention (alpha = motion factor); for
attenuation (alpha < 1, a < 0) the bound does not apply and every level gets a. The representative
wavelength of Laplacian level l (0 = finest; it holds roughly [2, 6] x 2^l px) is taken as
4 x 2^l px.

Config fields (`.get`, defaults in brackets):
  levels [0]: pyramid levels incl. the low-pass residual; 0 = floor(log2(min(H, W))) - 2 (a
    residual of 4-8 px).
  lambda_c [16.0]: cut-off wavelength in pixels of the input frame; <= 0 disables the attenuation.
  exaggeration [1.0]: Wu et al.'s released code multiplies the per-level bound by 2.
  chrom_attenuation [1.0]: factor on the amplified I and Q channels. The paper uses 0.1 (or 0) on
    real videos to keep colour noise down; 1.0 moves colour edges with luminance, which is what a
    score against the exactly magnified frame wants.
  plus the temporal fields of `classical.py`.
Per-pixel alpha maps are resized to each level with `resample.resize_bilinear`.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from magplus_jax.models import classical
from magplus_jax.models.magnifiers import Magnifier

Array = jax.Array

_BINOMIAL = (1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16)


def _mirror(j: int, n: int) -> int:
  """Index j folded into [0, n) by mirroring about the end samples (no edge repeat)."""
  if n == 1:
    return 0
  period = 2 * (n - 1)
  j = j % period
  return j if j < n else period - j


@functools.lru_cache(maxsize=None)
def _reduce_matrix(n: int) -> np.ndarray:
  """[ceil(n / 2), n]: binomial blur with mirrored borders, then every second sample."""
  m = np.zeros(((n + 1) // 2, n), np.float32)
  for i in range(m.shape[0]):
    for t, k in enumerate(_BINOMIAL):
      m[i, _mirror(2 * i + t - 2, n)] += k
  return m


@functools.lru_cache(maxsize=None)
def _expand_matrix(n_out: int, n_in: int) -> np.ndarray:
  """[n_out, n_in]: Burt-Adelson expand (zero insertion to 2 n_in, binomial blur x 2 per axis,
  mirrored borders), cropped to n_out."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    for t, k in enumerate(_BINOMIAL):
      j = _mirror(i + t - 2, 2 * n_in)
      if j % 2 == 0:
        m[i, j // 2] += 2.0 * k
  return m


def _separable(x: Array, mh: np.ndarray, mw: np.ndarray) -> Array:
  """Applies [h', H] along H and [w', W] along W of x [N, H, W, C].

  Small dense matrices rather than shifted slices or 1-channel convolutions: XLA fuses chains of
  slices across pyramid levels into huge expressions (tens of seconds to compile) and runs
  1-channel convolutions slowly on CPU, while these matmuls compile in about a second and are fast
  on every backend.
  """
  hp = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,nhwc->nowc", jnp.asarray(mh, x.dtype), x, precision=hp)
  return jnp.einsum("pw,nowc->nopc", jnp.asarray(mw, x.dtype), x, precision=hp)


def _down(x: Array) -> Array:
  _, h, w, _ = x.shape
  return _separable(x, _reduce_matrix(h), _reduce_matrix(w))


def _up(x: Array, size: tuple[int, int]) -> Array:
  _, h, w, _ = x.shape
  return _separable(x, _expand_matrix(size[0], h), _expand_matrix(size[1], w))


def auto_levels(h: int, w: int) -> int:
  return max(1, int(math.floor(math.log2(max(min(h, w), 1)))) - 2)


def laplacian_pyramid(x: Array, levels: int) -> list[Array]:
  """x [N, H, W, C] -> [band_0 (finest), ..., band_{levels-2}, low-pass residual]."""
  pyr = []
  g = x
  for _ in range(levels - 1):
    g_next = _down(g)
    pyr.append(g - _up(g_next, g.shape[1:3]))
    g = g_next
  pyr.append(g)
  return pyr


def collapse(pyr: list[Array]) -> Array:
  out = pyr[-1]
  for band in reversed(pyr[:-1]):
    out = band + _up(out, band.shape[1:3])
  return out


def level_amplification(alpha: Array, level: int, lambda_c: float, exaggeration: float) -> Array:
  """Added amplification a_l (module docstring) for a level, from the motion factor alpha."""
  a = alpha - 1.0
  if lambda_c <= 0:
    return a
  lam = 4.0 * 2.0 ** level
  cap = exaggeration * (alpha * (lam / lambda_c) - 1.0)
  return jnp.where(a >= 0, jnp.clip(jnp.minimum(a, cap), 0.0, None), a)


def eulerian_magnify(frames: Array, alpha: Array, *, levels: int = 0, lambda_c: float = 16.0,
                     exaggeration: float = 1.0, chrom_attenuation: float = 1.0,
                     temporal: dict | None = None) -> Array:
  """frames [B, T, H, W, 3] in [0, 1], alpha [B] or [B, T, H, W] -> [B, T, H, W, 3]."""
  temporal = temporal or dict(kind="reference", fl=0.4, fh=3.0, fps=30.0)
  b, t, h, w, _ = frames.shape
  levels = levels or auto_levels(h, w)
  yiq = classical.rgb_to_yiq(frames)
  motion = classical.temporal_filter(yiq, **temporal)
  alpha5 = classical.alpha_map(alpha, frames)
  pyr = laplacian_pyramid(motion.reshape(b * t, h, w, 3), levels)
  scaled = []
  for lev, band in enumerate(pyr):
    size = band.shape[1:3]
    a_l = level_amplification(classical.alpha_at(alpha5, size), lev, lambda_c, exaggeration)
    band = band.reshape(b, t, size[0], size[1], 3)
    scaled.append((band * a_l).reshape(b * t, size[0], size[1], 3))
  delta = collapse(scaled).reshape(b, t, h, w, 3)
  chroma = jnp.asarray([1.0, chrom_attenuation, chrom_attenuation], frames.dtype)
  out = classical.yiq_to_rgb(yiq + delta * chroma)
  return jnp.clip(out, 0.0, 1.0)


def build(cfg) -> Magnifier:
  levels = int(cfg.get("levels", 0))
  if levels < 0:
    raise ValueError(f"eulerian levels must be >= 0 (0 = automatic); got {levels}")
  kwargs = dict(levels=levels, lambda_c=float(cfg.get("lambda_c", 16.0)),
                exaggeration=float(cfg.get("exaggeration", 1.0)),
                chrom_attenuation=float(cfg.get("chrom_attenuation", 1.0)),
                temporal=classical.temporal_config(cfg))

  def core(frames, alpha):
    return eulerian_magnify(frames, alpha, **kwargs)

  return classical.make_magnifier("eulerian", core)
