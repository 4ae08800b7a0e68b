"""Procedural frame pairs with exact flow and the exact alpha-magnified frame (Oh et al. 2018).

A scene is a crop of a source image (face photo or procedural texture, see images.py) seen as a
continuous image (bilinear interpolation of a pyramid level whose pixel step matches the sampling
step). Frames are rendered `supersample` times larger and area-averaged down, then noise is added.

Motion: the *forward* flow is defined analytically, in output pixels,
    f(p) = t + sum_k a_k * exp(-((p_x - c_kx)^2 / (2 s_kx^2) + (p_y - c_ky)^2 / (2 s_ky^2))),
scaled so that max |f| over the output pixel grid is exactly the sampled amplitude A. The project's
convention holds by construction: the scene point at p in `ref` is at p + f(p) in `frame`, so
`resample.warp(frame, flow) ~= ref`; `magnified` moves the same points by alpha * f(p).
Rendering a frame needs the backward map: for each hi-res sample x, the y with y + f(y) = x. We
solve it by Newton's method (a 2x2 system per point) on the output-resolution grid, interpolate
that to the hi-res grid and take one more Newton step there. The field is kept fold-free
(max Frobenius norm of alpha * A * Jacobian <= `fold_limit`, default 0.5; bump widths grow until it
holds), so the map is invertible and Newton converges. The residual |y + f(y) - x| is ~1e-5
output px at worst (float32; tests/test_procedural.py asserts < 5e-5): this is the whole
"inexactness" of the geometry. What remains between `warp(frame, flow)` and `ref` is
discretisation (bilinear warp at output resolution, area sampling, noise): on a smooth scene
<= 2e-3 (max, interior); on face photos / textures the interior mean is ~1e-3 typically and up
to ~0.025 where fine detail meets bilinear interpolation (measured in the tests).

Sampling per example: alpha (log-uniform or uniform in [alpha_min, alpha_max]); amplitude
A = max |flow| log-uniform in max_motion_px, then capped at max_magnified_px / alpha (default
image_size / 4) so the magnified motion stays on the canvas -- at alpha 16 and 64 px, A <= 1 px;
1-4 bumps of width sigma_frac * image_size, 30% of fields with a global translation part;
noise: one std per example, ~ U(0, noise_std) or log-uniform in [noise_min, noise_std]
(noise_sampling: Oh et al.'s augmentation, so that the network learns not to magnify noise);
independent Gaussian noise on ref and frame (the network inputs), `magnified` clean unless
noise_target (it is the target).

Determinism: example (seed, split, index) uses np.random.default_rng([seed, split_tag, index]);
no global state. Train and held-out splits differ in seed stream (split_tag) AND in source images
(images.py: disjoint face photos and texture ids).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from data_pipelines import images

SPLIT_TAGS = {"train": 0x51A7, "test": 0x7E57}


# ----------------------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class ProceduralSpec:
  """The data-config fields the generator reads (all with defaults, `config.get(name, default)`)."""
  image_size: int = 64
  supersample: int = 4
  max_motion_px: tuple[float, float] = (0.05, 2.0)   # amplitude A of `flow`, log-uniform
  alpha_min: float = 1.0
  alpha_max: float = 16.0
  alpha_sampling: str = "log_uniform"                # or "uniform"
  max_magnified_px: float = 0.0                      # cap on alpha*A; 0 -> image_size / 4
  noise_std: float = 0.01                            # per-example std ~ U(0, noise_std)
  noise_sampling: str = "uniform"                    # or "log_uniform" in [noise_min, noise_std]
  noise_min: float = 1e-4
  noise_target: bool = False                         # add noise to `magnified` too
  sources: str = "all"                               # "faces", "textures", "all"
  max_bumps: int = 4
  sigma_frac: tuple[float, float] = (0.06, 0.3)      # bump widths / image_size, log-uniform
  translate_prob: float = 0.3
  fold_limit: float = 0.5

  @classmethod
  def from_config(cls, cfg: Any) -> "ProceduralSpec":
    cfg = {} if cfg is None else cfg
    kw = {}
    for f in dataclasses.fields(cls):
      v = cfg.get(f.name, f.default)
      if isinstance(f.default, tuple):
        v = (float(v), float(v)) if np.isscalar(v) else tuple(float(x) for x in v)
        if len(v) != 2:
          raise ValueError(f"data.{f.name}: expected (min, max), got {v}")
      kw[f.name] = v
    spec = cls(**kw)
    spec.validate()
    return spec

  def validate(self) -> None:
    lo, hi = self.max_motion_px
    if not 0 < lo <= hi:
      raise ValueError(f"data.max_motion_px: need 0 < min <= max, got {self.max_motion_px}")
    if not 0 < self.alpha_min <= self.alpha_max:
      raise ValueError(f"data.alpha_min/alpha_max: need 0 < min <= max, got "
                       f"{self.alpha_min}, {self.alpha_max}")
    if self.alpha_sampling not in ("log_uniform", "uniform"):
      raise ValueError(f"data.alpha_sampling: expected 'log_uniform' or 'uniform', got "
                       f"{self.alpha_sampling!r}")
    if self.noise_sampling not in ("uniform", "log_uniform"):
      raise ValueError(f"data.noise_sampling: expected 'uniform' or 'log_uniform', got "
                       f"{self.noise_sampling!r}")
    if self.noise_sampling == "log_uniform" and not 0 < self.noise_min <= self.noise_std:
      raise ValueError(f"data.noise_min/noise_std: need 0 < min <= std for log_uniform noise, got "
                       f"{self.noise_min}, {self.noise_std}")
    if self.sources not in ("faces", "textures", "all"):
      raise ValueError(f"data.sources: expected 'faces', 'textures' or 'all', got {self.sources!r}")
    if self.image_size < 8 or self.supersample < 1:
      raise ValueError(f"data.image_size >= 8 and data.supersample >= 1 needed, got "
                       f"{self.image_size}, {self.supersample}")

  @property
  def magnified_cap(self) -> float:
    return self.max_magnified_px if self.max_magnified_px > 0 else self.image_size / 4.0


# ------------------------------------------------------------------------------------ motion field
@dataclasses.dataclass(frozen=True)
class MotionField:
  """Forward flow in output pixels: translation + anisotropic Gaussian bumps (see module doc).

  centres [K, 2] (x, y), sigmas [K, 2] (sx, sy), amps [K, 2] (ax, ay), translation [2].
  """
  centres: np.ndarray
  sigmas: np.ndarray
  amps: np.ndarray
  translation: np.ndarray

  def scaled(self, c: float) -> "MotionField":
    return dataclasses.replace(self, amps=self.amps * c, translation=self.translation * c)

  def eval(self, x: np.ndarray, y: np.ndarray, jac: bool = False):
    """f at arbitrary points x, y (same shape). Returns (fx, fy) or (fx, fy, jxx, jxy, jyx, jyy),
    jxy = d fx / d y."""
    fx = np.full(x.shape, self.translation[0], np.float32)
    fy = np.full(x.shape, self.translation[1], np.float32)
    if jac:
      jxx, jxy, jyx, jyy = (np.zeros(x.shape, np.float32) for _ in range(4))
    u = np.empty(x.shape, np.float32)
    v = np.empty(x.shape, np.float32)
    g = np.empty(x.shape, np.float32)
    t = np.empty(x.shape, np.float32)
    for (cx, cy), (sx, sy), (ax, ay) in zip(self.centres, self.sigmas, self.amps):
      # In-place float32 arithmetic: this loop is the generator's hot spot.
      np.subtract(x, np.float32(cx), out=u)
      u *= np.float32(1.0 / sx)
      np.subtract(y, np.float32(cy), out=v)
      v *= np.float32(1.0 / sy)
      np.multiply(u, u, out=g)
      np.multiply(v, v, out=t)
      g += t
      g *= np.float32(-0.5)
      np.exp(g, out=g)
      fx += np.multiply(g, np.float32(ax), out=t)
      fy += np.multiply(g, np.float32(ay), out=t)
      if jac:
        u *= g
        u *= np.float32(-1.0 / sx)      # d g / d x
        v *= g
        v *= np.float32(-1.0 / sy)      # d g / d y
        jxx += np.multiply(u, np.float32(ax), out=t)
        jyx += np.multiply(u, np.float32(ay), out=t)
        jxy += np.multiply(v, np.float32(ax), out=t)
        jyy += np.multiply(v, np.float32(ay), out=t)
    if jac:
      return fx, fy, jxx, jxy, jyx, jyy
    return fx, fy

  def on_grid(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """f and its Jacobian Frobenius norm on the tensor grid ys x xs, using separability.

    Returns flow [len(ys), len(xs), 2] (x, y) and jac_norm [len(ys), len(xs)], float64.
    """
    xs = np.asarray(xs, np.float64)
    ys = np.asarray(ys, np.float64)
    # g_k(y, x) = gy_k(y) gx_k(x), so sum_k a_k g_k = gy^T diag(a) gx: one small matmul per term.
    u = (xs[None, :] - self.centres[:, :1]) / self.sigmas[:, :1]          # [K, nx]
    v = (ys[None, :] - self.centres[:, 1:]) / self.sigmas[:, 1:]          # [K, ny]
    gx, gy = np.exp(-0.5 * u * u), np.exp(-0.5 * v * v)
    dgx, dgy = gx * (-u / self.sigmas[:, :1]), gy * (-v / self.sigmas[:, 1:])
    ax, ay = self.amps[:, :1], self.amps[:, 1:]
    fx = gy.T @ (ax * gx) + self.translation[0]
    fy = gy.T @ (ay * gx) + self.translation[1]
    jn = ((gy.T @ (ax * dgx)) ** 2 + (dgy.T @ (ax * gx)) ** 2
          + (gy.T @ (ay * dgx)) ** 2 + (dgy.T @ (ay * gx)) ** 2)
    return np.stack([fx, fy], axis=-1), np.sqrt(jn)


def sample_unit_field(rng: np.random.Generator, n: int, spec: ProceduralSpec) -> MotionField:
  """A random field whose max |f| over the n x n output grid is 1."""
  k = int(rng.integers(1, spec.max_bumps + 1))
  centres = rng.uniform(-0.1 * n, 1.1 * n, size=(k, 2))
  lo, hi = spec.sigma_frac
  s = np.exp(rng.uniform(math.log(lo), math.log(hi), size=k)) * n
  aniso = np.exp(rng.uniform(-0.4, 0.4, size=k))
  sigmas = np.stack([s * aniso, s / aniso], axis=-1)
  ang = rng.uniform(0, 2 * np.pi, size=k)
  mag = rng.uniform(0.3, 1.0, size=k) * rng.choice([-1.0, 1.0], size=k)
  amps = np.stack([np.cos(ang), np.sin(ang)], -1) * mag[:, None]
  t = np.zeros(2)
  if rng.random() < spec.translate_prob:
    ta = rng.uniform(0, 2 * np.pi)
    t = rng.uniform(0.1, 0.7) * np.array([np.cos(ta), np.sin(ta)])
  return normalize_field(MotionField(centres, sigmas, amps, t), n)


def normalize_field(field: MotionField, n: int) -> MotionField:
  grid = np.arange(n, dtype=np.float64)
  flow, _ = field.on_grid(grid, grid)
  m = float(np.sqrt((flow ** 2).sum(-1)).max())
  if not m > 1e-9:
    raise ValueError("motion field vanishes on the output grid")
  return field.scaled(1.0 / m)


def make_fold_free(field: MotionField, n: int, max_scale: float, fold_limit: float) -> MotionField:
  """Widen the bumps until max_scale * ||J||_F <= fold_limit on the grid (keeps max |f| = 1)."""
  grid = np.arange(n, dtype=np.float64)
  for _ in range(80):
    _, jn = field.on_grid(grid, grid)
    if max_scale * float(jn.max()) <= fold_limit:
      return field
    field = normalize_field(dataclasses.replace(field, sigmas=field.sigmas * 1.2), n)
  raise ValueError(f"could not make the motion field fold-free for scale {max_scale}")


# ---------------------------------------------------------------------------------- inverse map
def _newton_step(field: MotionField, bx, by, x, y):
  """One Newton step on b for (x + b) + f(x + b) = x, i.e. b + f(x + b) = 0."""
  fx, fy, jxx, jxy, jyx, jyy = field.eval(x + bx, y + by, jac=True)
  rx, ry = bx + fx, by + fy
  a, b_, c, d = 1.0 + jxx, jxy, jyx, 1.0 + jyy
  det = a * d - b_ * c
  return bx - (d * rx - b_ * ry) / det, by - (a * ry - c * rx) / det


def _upsample(a: np.ndarray, r: int, m: int, axis: int) -> np.ndarray:
  """Linear interpolation along `axis` from a grid r times coarser to m samples (exact positions:
  fine sample j sits at coarse position j / r)."""
  j = np.arange(m)
  i0 = j // r
  w = ((j % r) / r).astype(a.dtype)
  i1 = np.minimum(i0 + 1, a.shape[axis] - 1)
  shape = [1] * a.ndim
  shape[axis] = m
  w = w.reshape(shape)
  lo = np.take(a, i0, axis=axis)
  return lo + (np.take(a, i1, axis=axis) - lo) * w


def backward_displacement(field: MotionField, coords: np.ndarray, coarse_factor: int = 4,
                          coarse_iters: int = 8, refine: int = 1,
                          tol: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
  """b with (x + b) + f(x + b) = x on the square tensor grid coords x coords (1-D, ascending, even
  spacing). Returns bx, by [len, len] float32: the scene point seen at x is x + b.

  Newton on a grid `coarse_factor` times coarser (to `tol`), linear interpolation (error up to
  ~3e-2 px), then `refine` Newton steps at full density, a second one where the first moved a
  point by > 2e-3 px (measured worst residual ~1e-5 px)."""
  m = len(coords)
  r = max(1, int(coarse_factor))
  mc = -(-(m - 1) // r) + 1
  step = float(coords[1] - coords[0]) if m > 1 else 1.0
  cc = (coords[0] + r * step * np.arange(mc)).astype(np.float32)
  xc, yc = np.meshgrid(cc, cc)
  bx, by = field.eval(xc, yc)
  bx, by = -bx, -by
  for _ in range(coarse_iters):
    nx, ny = _newton_step(field, bx, by, xc, yc)
    # Quadratic convergence: once the step is below tol, the error is far below it.
    done = max(np.abs(nx - bx).max(), np.abs(ny - by).max()) < tol
    bx, by = nx, ny
    if done:
      break
  if r > 1:
    bx = _upsample(_upsample(bx, r, m, 0), r, m, 1)
    by = _upsample(_upsample(by, r, m, 0), r, m, 1)
  x, y = np.meshgrid(coords.astype(np.float32), coords.astype(np.float32))
  for _ in range(refine):
    nx, ny = _newton_step(field, bx, by, x, y)
    # Newton's error after a step ~ 0.1 * (step)^2: points that moved > 2e-3 px get one more step
    # (few: where the field bends most), which takes the worst residual from ~1e-4 to ~1e-6.
    big = np.flatnonzero(np.maximum(np.abs(nx - bx), np.abs(ny - by)) > 2e-3)
    bx, by = nx, ny
    if big.size:
      fb = (bx.reshape(-1), by.reshape(-1))
      sx, sy = _newton_step(field, fb[0][big], fb[1][big], x.reshape(-1)[big], y.reshape(-1)[big])
      fb[0][big], fb[1][big] = sx, sy
  return bx, by


# ---------------------------------------------------------------------------------------- scenes
@dataclasses.dataclass(frozen=True)
class Scene:
  """A source crop: output coords (x, y) -> level-0 source pixel
  (ox + zoom*(x+0.5) - 0.5, oy + zoom*(y+0.5) - 0.5), x mirrored about the crop when flip."""
  key: tuple[str, int]
  origin: tuple[float, float]
  zoom: float
  flip: bool
  n: int

  def _level(self, step: float) -> tuple[np.ndarray, int]:
    levels = images.pyramid(self.key)
    lvl = int(np.clip(math.floor(math.log2(max(self.zoom * step, 1.0))), 0, len(levels) - 1))
    return levels[lvl], lvl

  def _to_level(self, x, y, lvl: int):
    xx = (self.n - (x + 0.5)) if self.flip else (x + 0.5)
    sx = (self.origin[0] + self.zoom * xx) / (1 << lvl) - 0.5
    sy = (self.origin[1] + self.zoom * (y + 0.5)) / (1 << lvl) - 0.5
    return sx, sy

  def sample(self, x: np.ndarray, y: np.ndarray, step: float) -> np.ndarray:
    """RGB at output coords x, y [...] -> [..., 3]; `step` = sampling step in output px."""
    img, lvl = self._level(step)
    sx, sy = self._to_level(x, y, lvl)
    return bilinear(img, sx, sy)

  def render_static(self, supersample: int) -> np.ndarray:
    """render(scene, None, s), separably: bilinear sampling on a tensor grid followed by block
    means is interpolate+average the rows, then the columns. [n, n, 3] float32."""
    n, s = self.n, supersample
    img, lvl = self._level(1.0 / s)
    coords = (np.arange(n * s) + 0.5) / s - 0.5
    sx, sy = self._to_level(coords, coords, lvl)
    h, w, _ = img.shape
    x0, fx = _lerp_index(sx, w)
    y0, fy = _lerp_index(sy, h)
    c0, c1 = int(x0.min()), int(x0.max()) + 2
    rows = np.take(img[:, c0:c1], y0, axis=0)                        # [n*s, C, 3]
    rows += (np.take(img[:, c0:c1], y0 + 1, axis=0) - rows) * fy[:, None, None]
    rows = area_downsample_axis(rows, s, 0)                           # [n, C, 3]
    out = np.take(rows, x0 - c0, axis=1)                              # [n, n*s, 3]
    out += (np.take(rows, x0 + 1 - c0, axis=1) - out) * fx[None, :, None]
    return area_downsample_axis(out, s, 1)


def _lerp_index(pos: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Left neighbour and weight of the right one, clamped exactly like `bilinear`."""
  p = np.clip(pos, 0.0, size - 1.0).astype(np.float32)
  i0 = np.minimum(p.astype(np.intp), size - 2)
  return i0, p - i0


def area_downsample_axis(a: np.ndarray, s: int, axis: int) -> np.ndarray:
  """Means of s consecutive entries along axis (float32)."""
  a = np.moveaxis(a, axis, 0)
  out = a[0::s].astype(np.float32, copy=True)
  for k in range(1, s):
    out += a[k::s]
  out *= np.float32(1.0 / s)
  return np.moveaxis(out, 0, axis)


def bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """img [h, w, C] at pixel coords (centres at integers), clamped to the border -> [..., C].

  Same interpolation as resample.sample_pixels inside the image; clamping (not zeros) only matters
  if a sample leaves the source, which the crop margins prevent.
  """
  h, w, c = img.shape
  x = np.clip(x, 0.0, w - 1.0, dtype=np.float32)
  y = np.clip(y, 0.0, h - 1.0, dtype=np.float32)
  x0f = np.minimum(np.floor(x), np.float32(w - 2))
  y0f = np.minimum(np.floor(y), np.float32(h - 2))
  fx = (x - x0f)[..., None]             # float32 throughout (an intp operand would give float64)
  fy = (y - y0f)[..., None]
  x0 = x0f.astype(np.intp)
  y0 = y0f.astype(np.intp)
  flat = img.reshape(-1, c)
  i = y0 * w
  i += x0
  # np.take is several times faster than fancy indexing here.
  top = np.take(flat, i, axis=0)
  top += (np.take(flat, i + 1, axis=0) - top) * fx
  bot = np.take(flat, i + w, axis=0)
  bot += (np.take(flat, i + w + 1, axis=0) - bot) * fx
  top += (bot - top) * fy
  return top


def render(scene: Scene, field: MotionField | None, supersample: int) -> np.ndarray:
  """The scene moved by `field` (forward flow, output px), rendered supersampled and area-averaged.

  Returns [n, n, 3] float32."""
  n, s = scene.n, supersample
  if field is None:
    return scene.render_static(s)
  coords = ((np.arange(n * s) + 0.5) / s - 0.5).astype(np.float32)
  x, y = np.meshgrid(coords, coords)
  bx, by = backward_displacement(field, coords)
  x += bx
  y += by
  hi = scene.sample(x, y, 1.0 / s)
  return area_downsample(hi, s)


def area_downsample(hi: np.ndarray, s: int) -> np.ndarray:
  """[n*s, n*s, C] -> [n, n, C] block means (strided adds: far faster than mean over axes 1, 3)."""
  if s == 1:
    return hi.astype(np.float32)
  return area_downsample_axis(area_downsample_axis(hi, s, 0), s, 1)


def sample_scene(rng: np.random.Generator, split: str, spec: ProceduralSpec,
                 margin_px: float) -> Scene:
  """A random source crop with `margin_px` output pixels of source around it on every side."""
  n = spec.image_size
  if spec.sources == "all":
    use_faces = rng.random() < 0.5
  else:
    use_faces = spec.sources == "faces"
  if use_faces:
    keys = images.face_keys(split)
    # Half the face draws go to the big photo, half to the small LFW faces.
    key = keys[0] if rng.random() < 0.5 else keys[1 + int(rng.integers(len(keys) - 1))]
  else:
    keys = images.texture_keys(split)
    key = keys[int(rng.integers(len(keys)))]
  h, w = images.image_shape(key)
  z_max = (min(h, w) - 2.0) / (n + 2.0 * margin_px)
  z_min = z_max * (0.35 if min(h, w) >= 128 else 0.7)
  zoom = float(np.exp(rng.uniform(math.log(z_min), math.log(z_max))))
  lo = zoom * margin_px + 1.0
  ox = float(rng.uniform(lo, w - 1.0 - zoom * (n + margin_px)))
  oy = float(rng.uniform(lo, h - 1.0 - zoom * (n + margin_px)))
  return Scene(key, (ox, oy), zoom, bool(rng.random() < 0.5), n)


def sample_alpha(rng: np.random.Generator, spec: ProceduralSpec) -> float:
  if spec.alpha_sampling == "log_uniform":
    return float(np.exp(rng.uniform(math.log(spec.alpha_min), math.log(spec.alpha_max))))
  return float(rng.uniform(spec.alpha_min, spec.alpha_max))


def add_noise(rng: np.random.Generator, img: np.ndarray, std: float) -> np.ndarray:
  if std <= 0:
    return img
  noisy = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(std)
  return np.clip(noisy, 0.0, 1.0, out=noisy)


# --------------------------------------------------------------------------------------- examples
def generate_example(spec: ProceduralSpec, split: str, seed: int,
                     index: int) -> dict[str, np.ndarray]:
  """One example, deterministic in (spec, split, seed, index).

  Returns ref, frame, magnified [n, n, 3] float32 in [0, 1]; flow [n, n, 2] float32 (x, y pixels,
  ref -> frame); alpha [] float32; amplitude [] float32 (= max |flow|); index [] int32.
  """
  if split not in SPLIT_TAGS:
    raise ValueError(f"split: expected one of {sorted(SPLIT_TAGS)}, got {split!r}")
  rng = np.random.default_rng([int(seed), SPLIT_TAGS[split], int(index)])
  n, s = spec.image_size, spec.supersample
  alpha = sample_alpha(rng, spec)
  lo, hi = spec.max_motion_px
  amp = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
  amp = min(amp, spec.magnified_cap / alpha)          # keep alpha * A <= cap (documented)
  unit = sample_unit_field(rng, n, spec)
  unit = make_fold_free(unit, n, max(alpha, 1.0) * amp, spec.fold_limit)
  field = unit.scaled(amp)
  # The field may exceed A slightly off the grid / outside the image; 1.5x + 2 px covers it.
  scene = sample_scene(rng, split, spec, margin_px=1.5 * max(alpha, 1.0) * amp + 2.0)
  grid = np.arange(n, dtype=np.float64)
  flow = field.on_grid(grid, grid)[0].astype(np.float32)
  ref = render(scene, None, s)
  frame = render(scene, field, s)
  magnified = render(scene, field.scaled(alpha), s)
  if spec.noise_sampling == "log_uniform":  # Oh et al. 2018: noise over decades, inputs only
    noise = float(np.exp(rng.uniform(math.log(spec.noise_min), math.log(spec.noise_std))))
  else:
    noise = float(rng.uniform(0.0, spec.noise_std))
  ref = add_noise(rng, ref, noise)
  frame = add_noise(rng, frame, noise)
  if spec.noise_target:
    magnified = add_noise(rng, magnified, noise)
  return {
      "ref": ref, "frame": frame, "magnified": magnified, "flow": flow,
      "alpha": np.float32(alpha), "amplitude": np.float32(amp), "index": np.int32(index),
  }
