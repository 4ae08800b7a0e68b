"""Source images that need no download: face photos shipped inside pip packages, plus a procedural
texture bank. Everything is cached per process, so a grain worker pays the load once.

Why these: the embedded-default data set must build offline on any machine the package installs on
(see ../shared/ASSETS.md). Faces: scikit-image's `astronaut()` (NASA, public domain), matplotlib's
`grace_hopper.jpg` (US Navy, public domain), scikit-image's `lfw_subset()` (first 100 of its 200
images are 25x25 grey LFW faces; research use). Textures are generated here from fixed seeds.

Train / held-out split of the *sources* (disjoint by construction):
  * train faces: astronaut + LFW faces 0..79;   held-out faces: grace_hopper + LFW faces 80..99.
  * train textures: bank ids 0..TRAIN_TEXTURES-1; held-out textures: ids from 10_000 on
    (different seeds, so no texture appears in both).
All images are float32 RGB [h, w, 3] in [0, 1]. `pyramid(image)` gives 2x area-averaged levels so a
renderer can pick a level whose pixel step matches its sampling step (no aliasing when zooming out).
"""
from __future__ import annotations

import functools

import numpy as np

TRAIN_TEXTURES = 48
TEST_TEXTURES = 12
TEXTURE_SIZE = 384
_TEST_TEXTURE_BASE = 10_000
_TEXTURE_TAG = 0x7E47  # keeps texture seeds apart from example seeds
_LFW_TRAIN = range(0, 80)
_LFW_TEST = range(80, 100)


def _to_float_rgb(img: np.ndarray) -> np.ndarray:
  img = np.asarray(img)
  if img.dtype == np.uint8:
    img = img.astype(np.float32) / 255.0
  img = img.astype(np.float32)
  if img.ndim == 2:
    img = np.repeat(img[..., None], 3, axis=-1)
  if img.ndim != 3 or img.shape[-1] < 3:
    raise ValueError(f"source image: expected [h, w, 3], got shape {img.shape}")
  return np.ascontiguousarray(np.clip(img[..., :3], 0.0, 1.0))


@functools.lru_cache(maxsize=None)
def astronaut() -> np.ndarray:
  """[512, 512, 3] float32, frontal face of ~95 px near the top centre."""
  import skimage.data
  return _to_float_rgb(skimage.data.astronaut())


@functools.lru_cache(maxsize=None)
def grace_hopper() -> np.ndarray:
  """[600, 512, 3] float32 frontal portrait."""
  import matplotlib.cbook
  from PIL import Image
  path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
  with Image.open(path) as im:
    return _to_float_rgb(np.asarray(im.convert("RGB")))


@functools.lru_cache(maxsize=None)
def lfw_faces() -> np.ndarray:
  """[100, 25, 25, 3] float32: the face half of skimage's lfw_subset, grey replicated to RGB."""
  import skimage.data
  faces = skimage.data.lfw_subset()[:100].astype(np.float32)
  return np.repeat(faces[..., None], 3, axis=-1)


def _smooth_noise(rng: np.random.Generator, size: int, beta: float, channels: int) -> np.ndarray:
  """Periodic 1/f^beta noise in [0, 1], per channel, via the FFT."""
  fy = np.fft.fftfreq(size)[:, None]
  fx = np.fft.rfftfreq(size)[None, :]
  f = np.sqrt(fx * fx + fy * fy)
  f[0, 0] = 1.0
  amp = f ** (-beta)
  amp[0, 0] = 0.0
  out = np.empty((size, size, channels), np.float32)
  for c in range(channels):
    spec = amp * (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape))
    x = np.fft.irfft2(spec, s=(size, size))
    x = (x - x.mean()) / (x.std() + 1e-12)
    out[..., c] = x
  return out


def _texture(tex_id: int) -> np.ndarray:
  """One procedural texture [S, S, 3]; its kind (noise, gratings, shapes, checks) depends on id."""
  rng = np.random.default_rng([_TEXTURE_TAG, tex_id])
  s = TEXTURE_SIZE
  kind = tex_id % 4
  yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
  if kind == 0:  # coloured 1/f noise: natural-image-like spectra
    beta = rng.uniform(1.2, 2.2)
    n = _smooth_noise(rng, s, beta, 3)
    mix = rng.normal(size=(3, 3)).astype(np.float32) * 0.15 + np.eye(3, dtype=np.float32) * 0.1
    img = 0.5 + n @ mix.T
  elif kind == 1:  # sum of oriented gratings with random colours: strong, clean gradients
    img = np.full((s, s, 3), 0.5, np.float32)
    for _ in range(rng.integers(2, 6)):
      theta = rng.uniform(0, np.pi)
      period = rng.uniform(6.0, 60.0)
      phase = rng.uniform(0, 2 * np.pi)
      wave = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)
      img += wave[..., None] * rng.uniform(-0.2, 0.2, size=3).astype(np.float32)
  elif kind == 2:  # random discs and rectangles on a noise background: edges and corners
    img = 0.5 + 0.1 * _smooth_noise(rng, s, 2.0, 3)
    for _ in range(rng.integers(15, 40)):
      colour = rng.uniform(0, 1, size=3).astype(np.float32)
      cx, cy = rng.uniform(0, s, size=2)
      r = rng.uniform(8, 60)
      if rng.random() < 0.5:
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
      else:
        rx, ry = r, rng.uniform(8, 60)
        mask = (np.abs(xx - cx) < rx) & (np.abs(yy - cy) < ry)
      img[mask] = colour
  else:  # rotated, smoothly distorted checkerboard
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(10.0, 50.0)
    dist = 6.0 * _smooth_noise(rng, s, 2.5, 2)
    u = (xx * np.cos(theta) + yy * np.sin(theta) + dist[..., 0]) / period
    v = (-xx * np.sin(theta) + yy * np.cos(theta) + dist[..., 1]) / period
    check = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    c0, c1 = rng.uniform(0, 1, size=(2, 3)).astype(np.float32)
    img = c0 + check[..., None] * (c1 - c0)
  # Soften hard edges slightly (a 3-tap box twice) so the scene is close to band-limited.
  for axis in (0, 1):
    img = (np.roll(img, 1, axis) + img + np.roll(img, -1, axis)) / 3.0
  return np.ascontiguousarray(np.clip(img, 0.0, 1.0).astype(np.float32))


@functools.lru_cache(maxsize=None)
def texture(tex_id: int) -> np.ndarray:
  return _texture(int(tex_id))


def texture_ids(split: str) -> range:
  _check_split(split)
  if split == "train":
    return range(TRAIN_TEXTURES)
  return range(_TEST_TEXTURE_BASE, _TEST_TEXTURE_BASE + TEST_TEXTURES)


def _check_split(split: str) -> None:
  if split not in ("train", "test"):
    raise ValueError(f"split: expected 'train' or 'test', got {split!r}")


def face_keys(split: str) -> tuple[tuple[str, int], ...]:
  """Keys (kind, i) of the face photos of a split; big photos first."""
  _check_split(split)
  if split == "train":
    return (("astronaut", 0),) + tuple(("lfw", i) for i in _LFW_TRAIN)
  return (("grace_hopper", 0),) + tuple(("lfw", i) for i in _LFW_TEST)


def texture_keys(split: str) -> tuple[tuple[str, int], ...]:
  return tuple(("texture", i) for i in texture_ids(split))


@functools.lru_cache(maxsize=None)
def smooth_pattern(i: int = 0) -> np.ndarray:
  """[256, 256, 3] low-frequency sinusoid pattern (periods >= 24 px): bilinear interpolation is
  nearly exact on it, so tests can check flow geometry without discretisation error."""
  rng = np.random.default_rng([_TEXTURE_TAG, 0xC0DE, i])
  yy, xx = np.mgrid[0:256, 0:256].astype(np.float64)
  img = np.full((256, 256, 3), 0.5)
  for _ in range(4):
    theta, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    period = rng.uniform(24.0, 64.0)
    wave = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)
    img += wave[..., None] * rng.uniform(-0.1, 0.1, size=3)
  return np.clip(img, 0, 1).astype(np.float32)


def get_image(key: tuple[str, int]) -> np.ndarray:
  kind, i = key
  if kind == "pattern":
    return smooth_pattern(i)
  if kind == "astronaut":
    return astronaut()
  if kind == "grace_hopper":
    return grace_hopper()
  if kind == "lfw":
    return lfw_faces()[i]
  if kind == "texture":
    return texture(i)
  raise ValueError(f"source image key: unknown kind {kind!r}")


def image_shape(key: tuple[str, int]) -> tuple[int, int]:
  """(h, w) of a source without building it (textures are generated lazily)."""
  if key[0] == "texture":
    return (TEXTURE_SIZE, TEXTURE_SIZE)
  return tuple(get_image(key).shape[:2])


def _area_down2(img: np.ndarray) -> np.ndarray:
  h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
  x = img[:h, :w]
  return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


@functools.lru_cache(maxsize=None)
def pyramid(key: tuple[str, int]) -> tuple[np.ndarray, ...]:
  """2x area-averaged levels of a source image, down to ~16 px (level 0 is the image itself).

  Level l pixel centres sit at (u0 + 0.5) / 2**l - 0.5 in level-0 pixel coordinates (exact for
  even sizes; an odd last row/column is dropped, which moves nothing else).
  """
  levels = [get_image(key)]
  while min(levels[-1].shape[:2]) >= 32:
    levels.append(_area_down2(levels[-1]))
  for lv in levels:
    lv.setflags(write=False)
  return tuple(levels)


def warm(split: str, sources: str = "all") -> None:
  """Build every source (and its pyramid) a split uses, e.g. in a grain worker before its first
  example, so that throughput does not dip while textures are generated lazily (~0.1 s each)."""
  keys = ()
  if sources in ("faces", "all"):
    keys += face_keys(split)
  if sources in ("textures", "all"):
    keys += texture_keys(split)
  for key in keys:
    pyramid(key)
