"""Synthetic micro-expression clips on real face photos, with exact flow and exact magnified frames.

A clip is T frames of one face photo (astronaut or grace_hopper, see images.py) in which one or two
facial action units (AUs) move with a micro-expression time course: neutral -> onset -> apex ->
offset -> neutral, each ramp a raised cosine, so the motion is smooth and peaks exactly at
`apex_index`. The apex amplitude (max |flow| over the output grid) is 0.1-1 px at the output
resolution, as in real micro-expressions.

Where the AUs go: the face box comes from scikit-image's LBP frontal-face cascade
(`skimage.feature.Cascade(skimage.data.lbp_frontal_face_cascade_filename())`, largest detection);
if it finds nothing, a hard-coded box checked against the detector in tests is used. AU regions sit
at canonical positions relative to that box (brows at 22% of its height, upper lids at 37%, mouth
corners at 80%, lips at 74% / 87%; checked by eye on both photos). Each AU is a pair (or one) of
anisotropic Gaussian bumps with a fixed motion direction (FACS: AU1+2 brows up, AU4 brows down and
in, AU43 upper lids down, AU12 lip corners out and up, AU15 lip corners down, AU10 upper lip up,
AU26 lower lip down). Motion is therefore localized: beyond 4 sigma of every bump it is below
3.4e-4 x the apex amplitude.

Flows are relative to frame 0 (which is neutral) and exact: frame t is rendered with the forward
field c(t) * f exactly as in procedural.py; `clip.magnified(alpha)` renders the same clip with
alpha * c(t) * f, the exact ground truth of an alpha-magnified clip, as long as the magnified map
stays one-to-one (alpha <= clip.max_alpha, else ValueError).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np

from data_pipelines import face_crop, images, procedural as P

MICRO_TAG = 0x3A1C
FACES = ("astronaut", "grace_hopper")
# (x, y, w, h) in source pixels: what the LBP cascade returns for the bundled photos (tests check).
FALLBACK_BOXES = {"astronaut": (170, 61, 110, 110), "grace_hopper": (161, 118, 199, 199)}
FOLD_LIMIT = 0.8

# AU name -> list of (u, v, sigma_u, sigma_v, dx, dy): centre relative to the face box (fractions of
# w, h), bump widths (fractions of w), motion direction in image coordinates (y down).
AUS: dict[str, list[tuple[float, ...]]] = {
    "AU1+2_brow_raise": [(0.30, 0.22, 0.11, 0.05, 0.0, -1.0), (0.70, 0.22, 0.11, 0.05, 0.0, -1.0)],
    "AU4_brow_lower": [(0.33, 0.22, 0.10, 0.05, 0.45, 1.0), (0.67, 0.22, 0.10, 0.05, -0.45, 1.0)],
    "AU43_lid_droop": [(0.31, 0.37, 0.07, 0.03, 0.0, 1.0), (0.69, 0.37, 0.07, 0.03, 0.0, 1.0)],
    "AU12_lip_corner_pull": [(0.34, 0.80, 0.05, 0.05, -0.8, -0.6),
                             (0.66, 0.80, 0.05, 0.05, 0.8, -0.6)],
    "AU15_lip_corner_depress": [(0.34, 0.80, 0.05, 0.05, -0.2, 1.0),
                                (0.66, 0.80, 0.05, 0.05, 0.2, 1.0)],
    "AU10_upper_lip_raise": [(0.50, 0.74, 0.10, 0.035, 0.0, -1.0)],
    "AU26_lower_lip_drop": [(0.50, 0.87, 0.10, 0.04, 0.0, 1.0)],
}


@functools.lru_cache(maxsize=None)
def face_box(name: str, detect: bool = True) -> tuple[int, int, int, int]:
  """(x, y, w, h) of the largest face in a bundled photo (source pixels), found by the one face
  detector (data_pipelines/face_crop.py); FALLBACK_BOXES (its result, stored) when detect=False or
  nothing is found."""
  if name not in FACES:
    raise ValueError(f"face: expected one of {FACES}, got {name!r}")
  if detect:
    found = face_crop.detect_faces(images.get_image((name, 0)))
    if found:
      top, left, h, w = found[0]
      return (left, top, w, h)
  return FALLBACK_BOXES[name]


def time_course(num_frames: int, onset: int, apex: int, offset: int) -> np.ndarray:
  """[T] in [0, 1]: 0 until onset, raised-cosine rise to 1 at apex, fall to 0 at offset, then 0."""
  if not 0 <= onset < apex < offset <= num_frames - 1:
    raise ValueError(f"time course: need 0 <= onset < apex < offset <= T-1, got onset={onset}, "
                     f"apex={apex}, offset={offset}, T={num_frames}")
  t = np.arange(num_frames, dtype=np.float64)
  c = np.zeros(num_frames)
  rise = (t >= onset) & (t <= apex)
  c[rise] = 0.5 * (1 - np.cos(np.pi * (t[rise] - onset) / (apex - onset)))
  fall = (t > apex) & (t <= offset)
  c[fall] = 0.5 * (1 + np.cos(np.pi * (t[fall] - apex) / (offset - apex)))
  return c


# Micro-expression timing. Yan et al., "How fast are the leaked facial expressions: the duration
# of micro-expressions" (J. Nonverbal Behavior 37, 2013), from the CASME annotations: total
# durations (onset -> offset) fall below 500 ms and onset phases (onset -> apex) below ~260 ms;
# CASME II (Yan et al., PLoS ONE 2014) and SAMM (Davison et al., IEEE TAC 2018) select their
# samples by the same 500 ms bound. The rise is drawn at about a third of the event.
DURATION_S = (0.25, 0.5)       # total duration, uniform
RISE_FRACTION = (0.25, 0.4)    # (apex - onset) / (offset - onset), uniform
MAX_RISE_S = 0.26


def event_timing(rng: np.random.Generator, num_frames: int, fps: float) -> tuple[int, int, int]:
  """(onset, apex, offset) frame indices of one micro-expression at `fps` (module constants and
  their source above). A clip shorter than the event holds it squeezed into its frames."""
  if num_frames < 4:
    raise ValueError(f"num_frames must be >= 4 for onset/apex/offset, got {num_frames}")
  if not fps > 0:
    raise ValueError(f"fps must be > 0, got {fps}")
  duration = rng.uniform(*DURATION_S)
  rise_s = min(duration * rng.uniform(*RISE_FRACTION), MAX_RISE_S)
  span = int(np.clip(round(duration * fps), 2, num_frames - 1))
  rise = int(np.clip(round(rise_s * fps), 1, span - 1))
  onset = int(rng.integers(0, num_frames - span))
  return onset, onset + rise, onset + span


@dataclasses.dataclass(frozen=True)
class MicroClip:
  """frames [T, n, n, 3] float32 in [0, 1]; flows [T, n, n, 2] float32 (x, y px, frame 0 -> frame t,
  exact; flows[0] = 0); course [T] (the time course c(t)); apex_index; au (AU names); face_box
  (x, y, w, h) in output pixel coordinates (pixel centres at integers); amplitude (max |flow| at the
  apex, px); max_alpha (largest alpha whose magnified clip is still one-to-one)."""
  frames: np.ndarray
  flows: np.ndarray
  course: np.ndarray
  apex_index: int
  au: tuple[str, ...]
  face_box: tuple[float, float, float, float]
  amplitude: float
  max_alpha: float
  scene: P.Scene
  field: P.MotionField          # forward field at the apex (flow = course[t] * field)
  supersample: int
  bumps: tuple[tuple[float, float, float, float], ...]   # (cx, cy, sx, sy) output px, per bump

  def magnified(self, alpha: float, indices=None) -> np.ndarray:
    """[T, n, n, 3]: the clip with every motion multiplied by alpha (alpha < 1 attenuates); only
    the frames `indices` (a sequence of frame numbers) when given, [len(indices), n, n, 3]."""
    alpha = float(alpha)
    if not 0 <= alpha <= self.max_alpha:
      raise ValueError(f"magnified: alpha {alpha} is outside [0, max_alpha={self.max_alpha:.3g}] "
                       f"(beyond it the magnified motion folds over itself)")
    course = self.course if indices is None else self.course[np.asarray(indices, int)]
    return np.stack([_render_scaled(self.scene, self.field, alpha * float(c), self.supersample)
                     for c in course])


def _render_scaled(scene: P.Scene, field: P.MotionField, c: float, supersample: int) -> np.ndarray:
  if c == 0.0:
    return P.render(scene, None, supersample)
  return P.render(scene, field.scaled(c), supersample)


def face_scene(rng: np.random.Generator, face: str, n: int):
  """(scene, face box, to_out) of a random n x n crop of a bundled photo around its face.

  The face box (source pixels) fills 55-70% of the crop width and the crop is jittered by up to
  8% of the box; to_out maps source pixel-edge coordinates to output coordinates (pixel centres
  at integers). Shared by the micro clips and FOMM's macro pairs (fomm_pairs.py)."""
  bx, by, bw, bh = face_box(face)
  zoom = bw / (n * rng.uniform(0.55, 0.7))
  cx = bx + bw / 2 + rng.uniform(-0.08, 0.08) * bw
  cy = by + bh / 2 + rng.uniform(-0.08, 0.08) * bh
  scene = P.Scene((face, 0), (cx - zoom * n / 2, cy - zoom * n / 2), zoom, False, n)

  def to_out(px, py):
    return (px - scene.origin[0]) / zoom - 0.5, (py - scene.origin[1]) / zoom - 0.5
  return scene, (bx, by, bw, bh), to_out


def au_field(rng: np.random.Generator, box, to_out, zoom: float, n: int, max_aus: int):
  """(unit field, AU names, bumps): 1..max_aus random AUs of `AUS` placed in the face box, each
  at a random weight in [0.5, 1], as one MotionField scaled to max |f| = 1 on the n x n grid;
  bumps are (cx, cy, sx, sy) in output pixels."""
  bx, by, bw, bh = box
  names = sorted(AUS)
  k = int(rng.integers(1, max_aus + 1))
  chosen = tuple(names[i] for i in sorted(rng.choice(len(names), size=k, replace=False)))
  centres, sigmas, amps, bumps = [], [], [], []
  for au in chosen:
    weight = rng.uniform(0.5, 1.0)
    for u, v, su, sv, dx, dy in AUS[au]:
      ox, oy = to_out(bx + u * bw, by + v * bh)
      sx, sy = su * bw / zoom, sv * bw / zoom
      d = np.array([dx, dy]) / math.hypot(dx, dy)
      centres.append((ox, oy))
      sigmas.append((sx, sy))
      amps.append(d * weight)
      bumps.append((ox, oy, sx, sy))
  unit = P.normalize_field(P.MotionField(np.array(centres), np.array(sigmas), np.array(amps),
                                         np.zeros(2)), n)
  return unit, chosen, bumps


def make_clip(cfg: Any = None, *, seed: int, index: int = 0) -> MicroClip:
  """One clip, deterministic in (cfg, seed, index). Config fields (`config.data` style, .get):
  image_size (64), num_frames (16), supersample (4), micro_amplitude_px ((0.1, 1.0), log-uniform),
  faces (both bundled photos), max_aus (2), noise_std (0.0; frames only, never `magnified`),
  fps (25.0: the frame rate the event's duration is drawn at, `event_timing`)."""
  cfg = {} if cfg is None else cfg
  n = int(cfg.get("image_size", 64))
  t_len = int(cfg.get("num_frames", 16))
  s = int(cfg.get("supersample", 4))
  lo, hi = (float(v) for v in cfg.get("micro_amplitude_px", (0.1, 1.0)))
  faces = tuple(cfg.get("faces", FACES))
  max_aus = int(cfg.get("max_aus", 2))
  noise_std = float(cfg.get("noise_std", 0.0))
  fps = float(cfg.get("fps", 25.0))
  if t_len < 4:
    raise ValueError(f"num_frames must be >= 4 for onset/apex/offset, got {t_len}")
  if not 0 < lo <= hi:
    raise ValueError(f"micro_amplitude_px: need 0 < min <= max, got {(lo, hi)}")
  rng = np.random.default_rng([int(seed), MICRO_TAG, int(index)])

  face = faces[int(rng.integers(len(faces)))]
  scene, box, to_out = face_scene(rng, face, n)
  unit, chosen, bumps = au_field(rng, box, to_out, scene.zoom, n, max_aus)
  amp = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
  field = unit.scaled(amp)
  grid = np.arange(n, dtype=np.float64)
  flow_apex, jn = field.on_grid(grid, grid)
  max_alpha = FOLD_LIMIT / float(jn.max())

  onset, apex, offset = event_timing(rng, t_len, fps)
  course = time_course(t_len, onset, apex, offset)

  frames = np.stack([_render_scaled(scene, field, c, s) for c in course])
  if noise_std > 0:
    frames = P.add_noise(rng, frames, noise_std)
  flows = (course[:, None, None, None] * flow_apex[None]).astype(np.float32)
  bx, by, bw, bh = box
  x0, y0 = to_out(bx, by)
  return MicroClip(frames=frames.astype(np.float32), flows=flows, course=course.astype(np.float32),
                   apex_index=apex, au=chosen,
                   face_box=(float(x0), float(y0), float(bw / scene.zoom), float(bh / scene.zoom)),
                   amplitude=amp, max_alpha=max_alpha, scene=scene, field=field, supersample=s,
                   bumps=tuple(tuple(float(v) for v in b) for b in bumps))
