"""Face-centred square crops of clips and images, for backbones trained on FOMM-style face crops.

Why one box per clip: the crop must not add motion of its own (a per-frame box would jitter and
the magnifier would amplify that jitter), so the box is found once on reference frames and then
applied to every frame.

Detector: scikit-image's LBP frontal-face cascade (ships with scikit-image, no download). It runs on
a copy downscaled to at most `DETECT_MAX_SIDE` pixels (speed; FOMM's crop script likewise detects
on frames downscaled to 640 px). Several detections in one frame: the largest wins. Several reference
frames (`num_reference` spread over the clip): their boxes are joined (union) when they overlap the
first box found (IoU > 0.25, FOMM's track criterion), so a stray false detection cannot stretch it.

Enlargement follows the rule of FOMM's `crop-video.py` (re-derived, not copied): each side grows by
at least `increase` times the box size, and the shorter side grows further until the box is roughly
square. We then make it exactly square around its centre. Default `increase` is 0.3, not FOMM's 0.1: the LBP cascade's boxes are
tighter (eyebrows to mouth) than the S3FD boxes FOMM's 0.1 was tuned for; 0.3 gives the VoxCeleb-like
framing (whole head, a little neck) that FOMM-family backbones were trained on. Clamping: a square larger than the image
is shrunk to the image's shorter side, and the square is then shifted (not padded) to lie inside the
image, so no artificial borders are introduced (the face may sit off-centre near an image edge).

No face found: a centre square crop (the largest square, centred), `CropBox.face_found=False`, and
a `NoFaceWarning` (filter it with `warnings.simplefilter("ignore", NoFaceWarning)`); never an error.

Resizing uses PIL's bilinear filter on float32 ("F" mode) channels: for downscaling PIL widens the
filter support by the scale factor, i.e. an antialiased (area-like) resize; it matches
`jax.image.resize(method="linear", antialias=True)` to ~1e-7 (checked in tests) and is ~5x faster on
CPU. This is a NumPy-side data-pipeline resize; inside JAX models use magplus_jax.models.resample.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import numpy as np

DETECT_MAX_SIDE = 320
_TRACK_IOU = 0.25


class NoFaceWarning(UserWarning):
  """No face was detected; a centre crop was used instead."""


class CropBox(NamedTuple):
  """Square crop in pixel coordinates of the source frames: rows top..top+size, cols left..left+size."""
  top: int
  left: int
  size: int
  face_found: bool


@functools.lru_cache(maxsize=1)
def _detector():
  import skimage.data
  import skimage.feature
  return skimage.feature.Cascade(skimage.data.lbp_frontal_face_cascade_filename())


def _check_image(image: np.ndarray, what: str) -> np.ndarray:
  arr = np.asarray(image)
  if arr.ndim != 3 or arr.shape[-1] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
    raise ValueError(f"{what}: expected an image [H, W, 3] with H, W > 0, got shape {arr.shape}")
  if arr.dtype == np.uint8:
    return arr.astype(np.float32) / 255.0
  return arr.astype(np.float32, copy=False)


def resize_frames(frames: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """[T, H, W, C] float -> [T, h, w, C] float32, bilinear with antialiasing when downscaling."""
  from PIL import Image
  frames = np.asarray(frames, dtype=np.float32)
  h, w = int(hw[0]), int(hw[1])
  if h < 1 or w < 1:
    raise ValueError(f"resize_frames: target size must be positive, got {hw}")
  if frames.shape[1:3] == (h, w):
    return frames.copy()
  out = np.empty((frames.shape[0], h, w, frames.shape[-1]), np.float32)
  for t in range(frames.shape[0]):
    for c in range(frames.shape[-1]):
      channel = Image.fromarray(np.ascontiguousarray(frames[t, :, :, c]))
      out[t, :, :, c] = np.asarray(channel.resize((w, h), Image.Resampling.BILINEAR))
  return out


def detect_faces(image: np.ndarray) -> list[tuple[int, int, int, int]]:
  """Face boxes (top, left, height, width) in pixels of `image` [H, W, 3], largest first."""
  img = _check_image(image, "detect_faces")
  h, w = img.shape[:2]
  scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
  small = img if scale == 1.0 else resize_frames(img[None], (max(1, round(h * scale)), max(1, round(w * scale))))[0]
  sh, sw = small.shape[:2]
  side = min(sh, sw)
  min_size = max(18, int(0.1 * side))
  if side < min_size:
    return []
  found = _detector().detect_multi_scale(img=small, scale_factor=1.2, step_ratio=1,
                                         min_size=(min_size, min_size), max_size=(side, side))
  boxes = [(int(round(d["r"] / scale)), int(round(d["c"] / scale)),
            int(round(d["height"] / scale)), int(round(d["width"] / scale))) for d in found]
  return sorted(boxes, key=lambda b: -b[2] * b[3])


def _iou(a, b) -> float:
  """IoU of (top, left, bottom, right) boxes."""
  ih = max(0, min(a[2], b[2]) - max(a[0], b[0]))
  iw = max(0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ih * iw
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def center_box(hw: tuple[int, int]) -> CropBox:
  """The largest centred square of an image of size (H, W)."""
  h, w = hw
  side = min(h, w)
  return CropBox((h - side) // 2, (w - side) // 2, side, False)


def square_box(face: tuple[int, int, int, int], hw: tuple[int, int], increase: float = 0.3) -> CropBox:
  """Enlarged, squared, in-image crop around a face box (top, left, bottom, right)."""
  top, left, bottom, right = face
  height, width = bottom - top, right - left
  # FOMM's rule: grow each side by >= `increase`, the shorter side more, towards a square.
  grow_w = max(increase, ((1 + 2 * increase) * height - width) / (2 * width))
  grow_h = max(increase, ((1 + 2 * increase) * width - height) / (2 * height))
  side = max(width * (1 + 2 * grow_w), height * (1 + 2 * grow_h))
  cy, cx = (top + bottom) / 2.0, (left + right) / 2.0
  h, w = hw
  side = int(round(min(side, h, w)))
  new_top = int(round(min(max(cy - side / 2.0, 0), h - side)))
  new_left = int(round(min(max(cx - side / 2.0, 0), w - side)))
  return CropBox(new_top, new_left, side, True)


def find_crop_box(frames: np.ndarray, *, increase: float = 0.3, num_reference: int = 3,
                  warn: bool = True) -> CropBox:
  """One square crop box for a clip [T, H, W, 3] (or an image [H, W, 3]) from reference frames."""
  frames = np.asarray(frames)
  if frames.ndim == 3:
    frames = frames[None]
  if frames.ndim != 4 or frames.shape[0] == 0:
    raise ValueError(f"find_crop_box: expected frames [T, H, W, 3] with T > 0, got shape {frames.shape}")
  hw = frames.shape[1:3]
  picks = sorted(set(np.linspace(0, frames.shape[0] - 1, max(1, num_reference)).round().astype(int).tolist()))
  tube = None
  for t in picks:
    boxes = detect_faces(frames[t])
    if not boxes:
      continue
    top, left, bh, bw = boxes[0]
    box = (top, left, top + bh, left + bw)
    if tube is None:
      tube, anchor = box, box
    elif _iou(anchor, box) > _TRACK_IOU:
      tube = (min(tube[0], box[0]), min(tube[1], box[1]), max(tube[2], box[2]), max(tube[3], box[3]))
  if tube is None:
    if warn:
      warnings.warn(f"no face found in {len(picks)} reference frame(s) of a {hw[0]}x{hw[1]} clip; "
                    "using a centre square crop", NoFaceWarning, stacklevel=2)
    return center_box(hw)
  return square_box(tube, hw, increase)


def apply_box(frames: np.ndarray, box: CropBox, size: int) -> np.ndarray:
  """Crops every frame [T, H, W, 3] with `box` and resizes to [T, size, size, 3] float32."""
  frames = np.asarray(frames)
  if frames.dtype == np.uint8:
    frames = frames.astype(np.float32) / 255.0
  crop = frames[:, box.top:box.top + box.size, box.left:box.left + box.size]
  if crop.shape[1] != box.size or crop.shape[2] != box.size:
    raise ValueError(f"apply_box: box {box} does not fit frames of size {frames.shape[1:3]}")
  return resize_frames(crop, (size, size))


def crop_clip(frames: np.ndarray, size: int, *, increase: float = 0.3, num_reference: int = 3,
              mode: str = "face") -> tuple[np.ndarray, CropBox]:
  """Clip [T, H, W, 3] -> (face crop [T, size, size, 3] float32, its CropBox); one box for all frames.

  mode: "face" (detector, centre fallback) or "center" (largest centred square, no detection).
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape[:3]) == 0:
    raise ValueError(f"crop_clip: expected frames [T, H, W, 3] with T, H, W > 0, got shape {frames.shape}")
  if size < 1:
    raise ValueError(f"crop_clip: size must be >= 1, got {size}")
  if mode == "face":
    box = find_crop_box(frames, increase=increase, num_reference=num_reference)
  elif mode == "center":
    box = center_box(frames.shape[1:3])
  else:
    raise ValueError(f"crop_clip: mode must be 'face' or 'center', got {mode!r}")
  return apply_box(frames, box, size), box


def crop_image(image: np.ndarray, size: int, *, increase: float = 0.3,
               mode: str = "face") -> tuple[np.ndarray, CropBox]:
  """Image [H, W, 3] -> (crop [size, size, 3] float32, CropBox); see crop_clip."""
  image = np.asarray(image)
  if image.ndim != 3:
    raise ValueError(f"crop_image: expected an image [H, W, 3], got shape {image.shape}")
  out, box = crop_clip(image[None], size, increase=increase, num_reference=1, mode=mode)
  return out[0], box

