"""Generic talking-head / natural video for magnifier pretraining: fixed-length clips at one size.

manual_dir holds video files (.mp4 .avi .mov .mkv .m4v .webm .gif) and/or frame folders (any
folder with images directly inside, natural order), at any depth, e.g.
  VoxCeleb crops as FOMM distributes them:   vox/train/id10001#7w0IBEWc9Qw#000993#001143.mp4
                                             vox-png/test/<name>/0000000.png ...
  MEAD:                                      M003/video/front/angry/level_1/001.mp4
  DAVIS / YouTube-VOS style:                 DAVIS/JPEGImages/480p/bear/00000.jpg
Splits: if the search root has sub-folders named train / test / val / validation, each is a split
(test -> "test", val -> "validation"); otherwise everything is "train". Folders named like
annotation or mask trees (config `exclude`: Annotations, ImageSets, ...) are never read as video.
`subdir` restricts the search (e.g. "DAVIS/JPEGImages/480p", so that Full-Resolution copies of the
same sequences are not read twice).

Each source is streamed (data_pipelines.video_io.iter_video), optionally subsampled in time
(frame_step), and cut into clips of clip_length frames every `stride` frames; each clip gets ONE
square crop box (centre square, or face box from the clip's first and last frames) and is resized
to image_size with antialiasing. Frame folders have no frame rate: `folder_fps` is recorded.

Malformed input: a file that cannot be decoded, a folder with mixed image sizes, a source shorter
than one clip: skipped, logged, listed in info.metadata["skipped"] (`strict=True`: an error). A
decoding error in the middle of a video keeps the clips already cut before it (they are valid).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import face_crop, video_io
from data_pipelines.tfds_builders import common

_SPLIT_NAMES = {"train": "train", "test": "test", "val": "validation", "validation": "validation"}


@dataclasses.dataclass(eq=False)
class VideoFoldersConfig(tfds.core.BuilderConfig):
  clip_length: int = 16
  stride: int | None = None            # frames between clip starts (after frame_step); None: clip_length
  frame_step: int = 1                  # keep every frame_step-th source frame
  image_size: int = 256
  crop: str = "center"                 # "center" | "face"
  increase: float = 0.3                # face box enlargement (face_crop)
  max_clips_per_video: int | None = None
  folder_fps: float = 25.0
  subdir: str | None = None
  exclude: tuple[str, ...] = ("Annotations", "Annotations_unsupervised", "ImageSets", "masks",
                              "segmentations", "depth", "flow")
  strict: bool = False


class VideoFolders(tfds.core.GeneratorBasedBuilder):
  """Fixed-length RGB clips cut from a folder of videos / frame folders (magnifier pretraining)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      VideoFoldersConfig(name="center256", description="16-frame clips, centre square crop, 256x256."),
      VideoFoldersConfig(name="face256", description="16-frame clips, face crop per clip, 256x256.",
                         crop="face"),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Place video files and/or frame folders into manual_dir, at any depth (e.g. FOMM's VoxCeleb crops
vox/train/*.mp4 and vox/test/*.mp4, MEAD's M003/video/front/..., DAVIS/JPEGImages/480p/<seq>/).
Sub-folders train / test / val of the search root become splits; config subdir limits the search."""

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "frames": tfds.features.Sequence(
                tfds.features.Image(shape=(cfg.image_size, cfg.image_size, 3), encoding_format="png"),
                length=cfg.clip_length),
            "clip_id": tfds.features.Text(),
            "video": tfds.features.Text(),       # path relative to the search root
            "start": np.int32,                   # source frame index of the first frame
            "fps": np.float32,                   # of the stored clip (source fps / frame_step)
            "crop_box": tfds.features.Tensor(shape=(3,), dtype=np.int32),   # top, left, size
            "face_found": np.bool_,
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _sources(self, root: Path) -> list[Path]:
    """Video files and frame folders under root, natural order, excluded trees left out."""
    exclude = {e.lower() for e in self.builder_config.exclude}
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
      dirnames[:] = sorted((d for d in dirnames if not d.startswith(".") and d.lower() not in exclude),
                           key=video_io.natural_key)
      names = [f for f in filenames if not f.startswith(".")]
      exts = {os.path.splitext(f)[1].lower() for f in names}
      if exts & set(video_io.IMAGE_EXTENSIONS):
        found.append(Path(dirpath))
      found.extend(Path(dirpath) / f for f in names
                   if os.path.splitext(f)[1].lower() in video_io.VIDEO_EXTENSIONS + video_io.GIF_EXTENSIONS)
    return sorted(found, key=lambda p: video_io.natural_key(str(p.relative_to(root))))

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    if cfg.clip_length < 1 or cfg.frame_step < 1 or (cfg.stride is not None and cfg.stride < 1):
      raise ValueError(f"{self.name}: clip_length, stride and frame_step must be >= 1 ({cfg})")
    if cfg.crop not in ("center", "face"):
      raise ValueError(f"{self.name}: config crop must be 'center' or 'face', got {cfg.crop!r}")
    manual_dir = Path(dl_manager.manual_dir)
    root = common.resolve_override(manual_dir, cfg.subdir) or manual_dir
    if not root.is_dir():
      raise common.MalformedDataError(f"{root}: search folder (config subdir) not found")
    split_dirs = {}
    for d in common.sub_dirs(root):
      split = _SPLIT_NAMES.get(d.name.lower())
      if split:
        split_dirs.setdefault(split, []).append(d)
    if not split_dirs:
      split_dirs = {"train": [root]}
    log = common.SkipLog(self.name, cfg.strict)
    generators = {}
    for split, dirs in split_dirs.items():
      sources = [s for d in dirs for s in self._sources(d)]
      if not sources:
        raise common.MalformedDataError(f"{self.name}: no video files or frame folders in "
                                        f"{[str(d) for d in dirs]}.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
      generators[split] = self._generate_examples(root, sources, log)
    self.info.metadata.update({"search_root": str(root), **log.metadata()})
    return generators

  def _clip_example(self, frames: np.ndarray, rel: str, start: int, fps: float, log) -> tuple[str, dict]:
    cfg = self.builder_config
    if cfg.crop == "face":
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", face_crop.NoFaceWarning)
        box = face_crop.find_crop_box(frames, increase=cfg.increase, num_reference=2)
      if not box.face_found:
        log.no_face.append(f"{rel}#{start}")
    else:
      box = face_crop.center_box(frames.shape[1:3])
    crops = face_crop.apply_box(frames, box, cfg.image_size)
    key = f"{rel}#{start:07d}"
    return key, {"frames": [common.encode_png(f) for f in crops], "clip_id": key, "video": rel,
                 "start": start, "fps": fps, "crop_box": np.asarray(box[:3], np.int32),
                 "face_found": bool(box.face_found)}

  def _generate_examples(self, root: Path, sources: list[Path], log: common.SkipLog):
    cfg = self.builder_config
    length, step = cfg.clip_length, cfg.frame_step
    stride = cfg.stride or length
    produced = 0
    for source in sources:
      rel = str(source.relative_to(root))
      made = 0
      buf: list[tuple[int, np.ndarray]] = []      # (source index, frame), kept frames only
      kept = 0                                    # number of kept frames seen so far
      next_start = 0                              # kept-frame position where the next clip starts
      try:
        stream = video_io.iter_video(source, chunk=64, folder_fps=cfg.folder_fps)
        fps = stream.fps / step
        index = 0
        for chunk in stream:
          for frame in chunk:
            if index % step == 0:
              if kept >= next_start:
                buf.append((index, frame))
              kept += 1
            index += 1
            while len(buf) >= length:
              if cfg.max_clips_per_video is not None and made >= cfg.max_clips_per_video:
                break
              yield self._clip_example(np.stack([f for _, f in buf[:length]]), rel, buf[0][0], fps, log)
              made += 1
              produced += 1
              next_start += stride
              drop = min(stride, len(buf))
              buf = buf[drop:]
          if cfg.max_clips_per_video is not None and made >= cfg.max_clips_per_video:
            break
      except video_io.VideoError as e:
        log.skip(rel, f"unreadable: {e}" + (f" (kept the {made} clips before the error)" if made else ""))
        continue
      if made == 0:
        log.skip(rel, f"shorter than one clip ({kept} frames after frame_step {step}, need {length})")
    self.info.metadata.update(log.metadata())
    if produced == 0:
      raise common.MalformedDataError(f"{self.name}: no clip could be cut from {len(sources)} sources; "
                                      f"first problems: {log.items[:3]}")
