"""MetaPortrait's driving inputs: landmark line drawings, the mouth box, gaze maps, landmark tracking.

MetaPortrait never looks at the driving image. Each frame is driven by 669 dense face landmarks
(x, y in [0, 1] image units, the official `*_ldmk.npy` format) and by a 256-d identity embedding of the
source (`src_*_id.npy`). Official preprocessing (`base_model/dataset.py`, reproduced here):
  * line image: the 616 edges of the dense-landmark connectivity drawn in a fixed order with
    anti-aliased 1-px lines (OpenCV `cv2.line(..., 1, cv2.LINE_AA)`), each edge in its own colour,
    endpoints `(int(x * 256), int(y * 256))`, on a black uint8 image, then / 255;
  * `ldmk58 = (2 * l - 1)[LDMK_IDX]`: 58 selected points in [-1, 1] (gaze maps and mouth box);
  * mouth box: rows/columns spanned by points 14/15 (x) and 56/57 (y), padded by 5 px.

The line drawing re-implements OpenCV 4.x's fixed-point anti-aliased line rasteriser (16-bit
sub-pixel positions, its slope-correction and Gaussian filter tables, end-point correction, the
doubled alpha blend, clipping to the image), so no OpenCV is needed: it reproduces the four stored
golden line images (drawn by OpenCV 4.14) bit for bit. Lines that leave the image follow the current
OpenCV clipping code; tests/test_metaportrait_vs_reference.py compares such drawings with cv2 when
opencv is installed. (Older OpenCV releases clipped anti-aliased lines 2 px inside the border; the
official environment used 4.4, so drawings that touch the outer 2 px may differ from its output.) It runs in numpy with exact 64-bit
integer arithmetic and enters jitted code through `jax.pure_callback`; its output is piecewise
constant in the landmarks, so it carries no gradient (nor does the original, which truncates the
endpoints to integers).

The 616-edge table below is the data of `base_model/utils/dense_669_connectivity.tsv` and the filter
tables are OpenCV's (`modules/imgproc/src/drawing.cpp`); MetaPortrait is MIT, OpenCV Apache-2.0.
"""
from __future__ import annotations

import functools
import random

import jax
import jax.numpy as jnp
import numpy as np

from magplus_jax.models import resample

Array = jax.Array

NUM_LANDMARKS = 669
IMAGE_SIZE = 256
# config.dataset.ldmk_idx of meta_portrait_256_eval.yaml: the 58 points used for gaze and mouth.
LDMK_IDX = (521, 505, 338, 398, 347, 35, 191, 30, 32, 207, 630, 629, 319, 4, 541, 61, 637, 660, 638,
            587, 273, 590, 269, 432, 118, 327, 12, 373, 58, 619, 466, 469, 464, 308, 152, 305, 150,
            411, 635, 634, 564, 250, 443, 129, 364, 322, 49, 7, 361, 105, 434, 120, 500, 186, 575,
            261, 636, 74)
GAZE_SLICE = slice(29, 37)      # the 8 iris points of the 58
GAZE_VARIANCE = 0.005
MOUTH_PAD = 5

_EDGES_TEXT = """
54,55 87,86 85,84 84,83 34,33 33,32 23,35 31,30 22,36 36,79 79,78 81,62 62,77 20,15 15,16 9,6
6,7 48,49 41,47 52,53 53,39 39,42 42,634 637,68 66,67 75,73 73,72 72,71 64,65 65,69 69,636 60,61
61,43 57,44 630,8 8,10 13,12 11,14 100,0 101,27 628,629 629,633 633,640 26,5 5,28 46,38 38,45
59,58 58,51 3,89 634,635 636,637 74,88 88,639 641,90 90,91 91,92 94,96 94,95 95,642 97,96 99,118
27,102 635,641 641,411 103,104 104,643 638,643 108,107 107,110 112,105 113,114 109,108 115,116
110,25 120,117 2,119 630,632 630,644 119,644 1,122 126,129 123,124 123,127 127,128 128,148
152,153 153,154 155,156 212,197 213,205 205,200 235,236 238,239 239,237 193,192 231,234 182,175
201,181 181,179 179,178 178,177 176,182 206,164 164,162 162,198 198,196 196,208 186,166 228,660
226,227 224,225 219,220 220,202 204,209 209,218 215,214 157,165 203,216 168,169 171,172 172,173
173,661 254,160 255,189 655,656 185,159 195,183 183,194 194,163 654,655 653,659 187,188 653,167
158,242 244,245 247,248 248,249 249,250 250,251 251,252 161,255 258,257 259,258 260,259 266,267
267,199 262,263 264,265 245,268 272,273 261,257 186,261 187,270 271,188 270,276 265,246 276,277
264,277 246,278 278,279 280,282 283,285 283,284 302,303 303,304 304,305 305,306 309,310 635,212
197,54 55,213 200,40 236,82 82,240 240,87 86,238 237,85 83,235 29,191 191,34 32,193 192,23
35,184 184,31 30,190 190,29 21,232 232,22 78,231 234,80 80,233 233,81 77,230 230,76 76,229
229,21 175,20 16,180 180,18 18,174 174,19 19,201 177,17 17,176 24,167 167,9 7,207 207,48 49,206
208,50 50,186 166,24 199,41 47,211 211,52 68,222 222,66 67,223 71,228 223,75 227,63 63,221
221,64 74,224 225,70 70,226 218,60 43,219 202,88 657,1 1,204 44,215 214,56 56,210 210,37 4,157
165,629 639,203 216,57 157,37 4,159 159,3 89,158 242,2 10,168 169,13 12,170 170,11 14,171
102,161 656,628 640,657 654,26 28,185 638,241 241,46 45,217 217,59 51,195 631,658 631,659
653,632 25,187 163,632 634,658 657,636 74,660 639,661 638,661 92,243 243,93 93,244 411,247
252,98 253,99 189,100 0,254 160,101 662,643 188,103 105,256 256,106 642,662 106,662 268,109
40,260 261,111 111,266 99,262 263,113 114,264 269,115 116,274 98,253 103,272 257,110 25,269
112,275 274,118 117,271 273,120 279,97 654,644 275,121 265,121 265,117 165,122 125,282 281,125
281,129 126,285 148,301 284,149 150,302 306,151 151,307 307,152 154,308 308,155 156,309 150,310
369,370 401,400 399,398 398,397 349,348 348,347 338,350 346,345 337,351 351,393 393,392 395,377
377,391 335,330 330,331 324,321 321,322 363,364 356,362 367,368 368,354 354,357 357,634 637,383
381,382 389,388 388,387 387,386 379,380 380,384 384,636 375,376 376,358 372,359 630,323 323,325
328,327 326,329 414,315 415,342 341,320 320,343 361,353 353,360 374,373 373,366 318,402 641,403
403,404 404,405 407,409 407,408 408,642 410,409 413,432 342,416 417,418 418,643 422,421 421,424
426,419 427,428 423,422 429,430 424,340 434,431 317,433 433,644 316,436 440,443 437,438 437,441
441,442 442,462 466,467 467,468 469,470 526,511 527,519 519,514 549,550 552,553 553,551 507,506
545,548 496,489 515,495 495,493 493,492 492,491 490,496 520,478 478,476 476,512 512,510 510,522
500,480 542,660 540,541 538,539 533,534 534,516 518,523 523,532 529,528 471,479 517,530 482,483
485,486 486,487 487,661 568,474 569,503 499,473 509,497 497,508 508,477 501,502 653,481 472,556
558,559 561,562 562,563 563,564 564,565 565,566 475,569 572,571 573,572 574,573 580,581 581,513
576,577 578,579 559,582 586,587 575,571 500,575 501,584 585,502 584,590 579,560 590,591 578,591
560,592 592,593 594,596 597,599 597,598 616,617 617,618 618,619 619,620 623,624 635,526 511,369
370,527 514,355 550,396 396,554 554,401 400,552 551,399 397,549 344,505 505,349 347,507 506,338
350,498 498,346 345,504 504,344 336,546 546,337 392,545 548,394 394,547 547,395 391,544 544,390
390,543 543,336 489,335 331,494 494,333 333,488 488,334 334,515 491,332 332,490 339,481 481,324
322,521 521,363 364,520 522,365 365,500 480,339 513,356 362,525 525,367 383,536 536,381 382,537
386,542 537,389 541,378 378,535 535,379 539,385 385,540 532,375 358,533 657,316 316,518 359,529
528,371 371,524 524,352 319,471 479,629 639,517 530,372 471,352 319,473 473,318 402,472 556,317
325,482 483,328 327,484 484,326 329,485 416,475 654,341 343,499 638,555 555,361 360,531 531,374
366,509 340,501 477,632 405,557 557,406 406,558 411,561 566,412 567,413 503,414 315,568 474,415
502,417 419,570 570,420 420,662 582,423 355,574 575,425 425,580 413,576 577,427 428,578 583,429
430,588 412,567 417,586 571,424 340,583 426,589 588,432 431,585 587,434 593,410 589,435 579,435
579,431 479,436 439,596 595,439 595,443 440,599 462,615 598,463 464,616 620,465 465,621 621,466
468,622 622,469 470,623 464,624 74,538 516,88
"""


@functools.lru_cache(maxsize=None)
def edges() -> np.ndarray:
  """[616, 2] int: landmark index pairs, in drawing order."""
  pairs = [p.split(",") for p in _EDGES_TEXT.split()]
  return np.asarray(pairs, dtype=np.int64)


@functools.lru_cache(maxsize=None)
def edge_colors() -> np.ndarray:
  """[616, 3] int: each edge's colour, as the official dataset builds it.

  A regular grid of colours (step int(255 / 616^(1/3)) per channel), its last 616 entries, shuffled
  by Python's `random` seeded with 0. The values are written to channels 0, 1, 2 as given.
  """
  n = len(edges())
  step = int(255 / n ** (1.0 / 3))
  grid = [[r, g, b] for r in range(0, 255, step) for g in range(0, 255, step)
          for b in range(0, 255, step)]
  colors = grid[-n:]
  random.Random(0).shuffle(colors)
  return np.asarray(colors, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Anti-aliased line rasterisation (OpenCV LINE_AA, thickness 1), exact integer arithmetic.
_SHIFT = 16
_ONE = 1 << _SHIFT
_SLOPE_CORR = (
    181, 181, 181, 182, 182, 183, 184, 185, 187, 188, 190, 192, 194, 196, 198, 201,
    203, 206, 209, 211, 214, 218, 221, 224, 227, 231, 235, 238, 242, 246, 250, 254)
_FILTER = np.array([
    168, 177, 185, 194, 202, 210, 218, 224, 231, 236, 241, 246, 249, 252, 254, 254,
    254, 254, 252, 249, 246, 241, 236, 231, 224, 218, 210, 202, 194, 185, 177, 168,
    158, 149, 140, 131, 122, 114, 105, 97, 89, 82, 75, 68, 62, 56, 50, 45,
    40, 36, 32, 28, 25, 22, 19, 16, 14, 12, 11, 9, 8, 7, 5, 5], np.int64)


def _tdiv(a: int, b: int) -> int:
  """C integer division (truncation toward zero)."""
  q = abs(a) // abs(b)
  return q if (a >= 0) == (b >= 0) else -q


def _clip_segment(w: int, h: int, x1: int, y1: int, x2: int, y2: int):
  """Cohen-Sutherland clip of a fixed-point segment to [0, w-1] x [0, h-1]; None if outside."""
  right, bottom = w - 1, h - 1

  def code(x, y):
    return (x < 0) + (x > right) * 2 + (y < 0) * 4 + (y > bottom) * 8

  c1, c2 = code(x1, y1), code(x2, y2)
  if (c1 & c2) == 0 and (c1 | c2) != 0:
    if c1 & 12:
      a = 0 if c1 < 8 else bottom
      x1 += int(float(a - y1) * float(x2 - x1) / float(y2 - y1))
      y1 = a
      c1 = (x1 < 0) + (x1 > right) * 2
    if c2 & 12:
      a = 0 if c2 < 8 else bottom
      x2 += int(float(a - y2) * float(x2 - x1) / float(y2 - y1))
      y2 = a
      c2 = (x2 < 0) + (x2 > right) * 2
    if (c1 & c2) == 0 and (c1 | c2) != 0:
      if c1:
        a = 0 if c1 == 1 else right
        y1 += int(float(a - x1) * float(y2 - y1) / float(x2 - x1))
        x1 = a
        c1 = 0
      if c2:
        a = 0 if c2 == 1 else right
        y2 += int(float(a - x2) * float(y2 - y1) / float(x2 - x1))
        x2 = a
        c2 = 0
  if c1 | c2:
    return None
  return x1, y1, x2, y2


def _segment_setup(w: int, h: int, p1, p2):
  """Fixed-point set-up of one anti-aliased segment (Python ints), or None if it is clipped away.

  Returns (x_major, major0, minor0, step, count, end-correction table of 9 entries).
  """
  clipped = _clip_segment(w << _SHIFT, h << _SHIFT, p1[0] << _SHIFT, p1[1] << _SHIFT,
                          p2[0] << _SHIFT, p2[1] << _SHIFT)
  if clipped is None:
    return None
  x1, y1, x2, y2 = clipped
  # Work in (major, minor) coordinates: the axis with the larger extent is stepped one pixel at a
  # time, the other carries a 16-bit fixed-point position.
  x_major = abs(x2 - x1) > abs(y2 - y1)
  if not x_major:
    x1, y1, x2, y2 = y1, x1, y2, x2
  if x2 < x1:
    x1, y1, x2, y2 = x2, y2, x1, y1
  step = _tdiv((y2 - y1) << _SHIFT, (x2 - x1) | 1)
  x2 += _ONE
  count = (x2 >> _SHIFT) - (x1 >> _SHIFT)
  y1 += ((step * -(x1 & (_ONE - 1))) >> _SHIFT) + (_ONE >> 1)
  slope = (step >> (_SHIFT - 5)) & 0x3F
  if step < 0:
    slope ^= 0x3F
  slope = 0x100 if slope & 0x20 else _SLOPE_CORR[slope]
  # End-point coverage corrections from the 4-bit sub-pixel fractions of both ends.
  fi = (x1 >> (_SHIFT - 7)) & 0x78
  fj = (x2 >> (_SHIFT - 7)) & 0x78
  t0 = slope << 7
  t1 = ((0x78 - fi) | 4) * slope
  t2 = (fj | 4) * slope
  mid = ((((fj - fi) & 0x78) | 4) * slope >> 8) & 0x1FF
  ends = (0, mid, (t1 >> 8) & 0x1FF, mid, ((((fj - fi) + 0x80) | 4) * slope >> 8) & 0x1FF,
          ((t1 + t0) >> 8) & 0x1FF, (t2 >> 8) & 0x1FF, ((t2 + t0) >> 8) & 0x1FF, slope)
  return x_major, x1 >> _SHIFT, y1, step, count, ends


def draw_lines_np(landmarks: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  """One line image. landmarks: [669, 2] in [0, 1] -> uint8 [size, size, 3]."""
  pts = np.asarray(landmarks, np.float32)
  if pts.shape != (NUM_LANDMARKS, 2):
    raise ValueError(f"landmarks must be [{NUM_LANDMARKS}, 2] (x, y in [0, 1]); got {pts.shape}")
  if not np.all(np.isfinite(pts)):
    raise ValueError("landmarks contain NaN or inf")
  # int() truncates toward zero, after the float32 product, as the official code does.
  pix = np.trunc(pts * np.float32(size)).astype(np.int64).tolist()
  setups, colors = [], []
  for (i, j), color in zip(_edge_list(), _color_list()):
    s = _segment_setup(size, size, pix[i], pix[j])
    if s is not None:
      setups.append(s)
      colors.append(color)
  img = np.zeros((size, size, 3), np.int64)
  if not setups:
    return img.astype(np.uint8)
  # All steps of all segments at once; k is the step index within its segment.
  x_major, major0, minor0, step, count, ends = (np.asarray(v, np.int64) for v in zip(*setups))
  n_steps = count + 1
  seg = np.repeat(np.arange(len(setups)), n_steps)
  k = np.arange(seg.size) - np.repeat(np.cumsum(n_steps) - n_steps, n_steps)
  minor_fp = minor0[seg] + k * step[seg]
  corr = ends[seg, np.minimum(k, 2) * 3 + np.minimum(count[seg] - k, 2)]
  dist = (minor_fp >> (_SHIFT - 5)) & 31
  taps = np.stack([_FILTER[dist + 32], _FILTER[dist], _FILTER[63 - dist]], axis=1)    # [S, 3]
  alpha = ((corr[:, None] * taps) >> 8) & 0xFF
  minor = ((minor_fp >> _SHIFT) - 1)[:, None] + np.arange(3)[None, :]
  major = np.broadcast_to((major0[seg] + k)[:, None], minor.shape)
  xm = x_major[seg][:, None]
  rows = np.where(xm, minor, major).ravel()
  cols = np.where(xm, major, minor).ravel()
  alpha = alpha.ravel()
  keep = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
  rows, cols, alpha = rows[keep], cols[keep], alpha[keep]
  seg3 = np.repeat(seg, 3)[keep]
  starts = np.searchsorted(seg3, np.arange(len(setups) + 1))
  flat = img.reshape(-1, 3)
  lin = rows * size + cols
  colors = np.asarray(colors, np.int64)
  # Segments are blended one after another (a pixel hit by two edges sees the first one's result);
  # within a segment every pixel is distinct.
  for s in range(len(setups)):
    a, b = starts[s], starts[s + 1]
    if a == b:
      continue
    idx = lin[a:b]
    v = flat[idx]
    al = alpha[a:b, None]
    c = colors[s][None, :]
    for _ in range(2):  # OpenCV blends every tap twice
      v = v + (((c - v) * al + 127) >> 8)
    flat[idx] = v
  return flat.reshape(size, size, 3).astype(np.uint8)


@functools.lru_cache(maxsize=None)
def _edge_list():
  return [tuple(e) for e in edges().tolist()]


@functools.lru_cache(maxsize=None)
def _color_list():
  return edge_colors().tolist()


def _draw_batch_np(landmarks: np.ndarray, size: int) -> np.ndarray:
  lead = landmarks.shape[:-2]
  flat = landmarks.reshape((-1,) + landmarks.shape[-2:])
  out = np.stack([draw_lines_np(l, size) for l in flat]) if len(flat) else np.zeros(
      (0, size, size, 3), np.uint8)
  return (out.astype(np.float32) / np.float32(255.0)).reshape(lead + (size, size, 3))


def draw_lines(landmarks: Array, size: int = IMAGE_SIZE) -> Array:
  """Line images for use inside jit. landmarks: [..., 669, 2] in [0, 1] -> [..., size, size, 3]."""
  if landmarks.shape[-2:] != (NUM_LANDMARKS, 2):
    raise ValueError(f"landmarks must be [..., {NUM_LANDMARKS}, 2]; got {landmarks.shape}")
  out = jax.ShapeDtypeStruct(landmarks.shape[:-2] + (size, size, 3), jnp.float32)
  fn = lambda l: _draw_batch_np(np.asarray(l, np.float32), size)
  return jax.pure_callback(fn, out, jax.lax.stop_gradient(landmarks).astype(jnp.float32),
                           vmap_method="broadcast_all")


# ---------------------------------------------------------------------------------------------
def select_points(landmarks: Array) -> Array:
  """`ldmk_proc`: [..., 669, 2] in [0, 1] -> [..., 58, 2] in [-1, 1]."""
  return (landmarks * 2 - 1)[..., jnp.asarray(LDMK_IDX), :]


def mouth_mask(ldmk58: Array, size: int = IMAGE_SIZE) -> Array:
  """The official mouth box. ldmk58: [B, 58, 2] in [-1, 1] -> [B, size, size, 1] of {0, 1}."""
  half = lambda v: jnp.trunc((v + 1) * size / 2).astype(jnp.int32)   # Python int(): toward zero
  left, right = half(ldmk58[:, 14, 0]), half(ldmk58[:, 15, 0])
  top, bottom = half(ldmk58[:, 56, 1]), half(ldmk58[:, 57, 1])
  idx = jnp.arange(size)
  rows = (idx[None] >= (top - MOUTH_PAD)[:, None]) & (idx[None] <= (bottom + MOUTH_PAD)[:, None])
  cols = (idx[None] >= (left - MOUTH_PAD)[:, None]) & (idx[None] <= (right + MOUTH_PAD)[:, None])
  return (rows[:, :, None] & cols[:, None, :]).astype(jnp.float32)[..., None]


def gaze_heatmaps(ldmk58: Array, h: int, w: int) -> Array:
  """Gaussians of the 8 iris points on the corner-aligned grid. [B, 58, 2] -> [B, h, w, 8]."""
  grid = resample.make_coordinate_grid(h, w)                       # [h, w, 2]
  kp = ldmk58[:, GAZE_SLICE]                                       # [B, 8, 2]
  d = grid[None, :, :, None, :] - kp[:, None, None, :, :]
  return jnp.exp(-0.5 * jnp.sum(d * d, axis=-1) / GAZE_VARIANCE)


# ---------------------------------------------------------------------------------------------
def landmarks_along_flow(flow, reference: Array, frames: Array, landmarks0: Array) -> Array:
  """Moves landmarks of `reference` to every frame along the estimated optical flow.

  flow: a FlowEstimator; reference: [B, H, W, 3]; frames: [B, T, H, W, 3]; landmarks0: [B, N, 2]
  in [0, 1] image units (the official format: pixel position = l * size). Returns [B, T, N, 2].
  The flow reference -> frame t is read (bilinearly) at each landmark; pixel centres sit at
  (i + 0.5) / size in these units. Positions are clamped into the image before the lookup so a
  landmark at the border still reads the border's flow.
  """
  b, t, h, w, _ = frames.shape
  ref = jnp.broadcast_to(reference[:, None], frames.shape).reshape((b * t, h, w, 3))
  f = flow.flow_fn(flow.params, ref, frames.reshape((b * t, h, w, 3)))   # [B*T, H, W, 2]
  px = jnp.clip(landmarks0[..., 0] * w - 0.5, 0.0, w - 1.0)
  py = jnp.clip(landmarks0[..., 1] * h - 0.5, 0.0, h - 1.0)
  px = jnp.broadcast_to(px[:, None], (b, t) + px.shape[1:]).reshape((b * t, -1))
  py = jnp.broadcast_to(py[:, None], (b, t) + py.shape[1:]).reshape((b * t, -1))
  disp = resample.sample_pixels(f, px, py).reshape((b, t, -1, 2))
  scale = jnp.asarray([w, h], landmarks0.dtype)
  return landmarks0[:, None] + disp / scale


def track_landmarks(flow, frames: Array, landmarks0: Array) -> Array:
  """Landmarks of frames[:, 0] followed through the clip. [B, T, H, W, 3], [B, N, 2] -> [B, T, N, 2].

  Frame 0 keeps `landmarks0` exactly; frame t > 0 gets landmarks0 + flow(frame 0 -> frame t) at
  the landmarks (each frame measured from frame 0, so errors do not accumulate along the clip).
  """
  if frames.shape[1] == 1:
    return landmarks0[:, None]
  rest = landmarks_along_flow(flow, frames[:, 0], frames[:, 1:], landmarks0)
  return jnp.concatenate([landmarks0[:, None], rest], axis=1)
