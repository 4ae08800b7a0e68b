"""What the micro-expression builders (CASME II, SAMM, SMIC, CAS(ME)^3) share: config, features,
frame encoding, skip bookkeeping. Each data set module only lists its clips (`_list_clips`).

Stored example (one micro-expression clip; evaluation data, a single split "test"):
  frames        Sequence(Image)  config image_size set: face crops [S, S, 3] as PNG (one crop box
                                  per clip, data_pipelines.face_crop); image_size None ("raw"): the
                                  original image files' bytes, decoded to [H, W, 3] uint8
  onset, apex, offset            int32 indices into `frames` (apex -1 when not annotated)
  source_onset/apex/offset       int32 frame numbers as annotated (-1 unknown)
  action_units (text as annotated), aus (Sequence int32, the AU numbers in it)
  emotion (as annotated, lower case), emotion_3 (positive / negative / surprise / other)
  subject, video (the recording / clip folder), clip_id (unique key), fps (the camera's rate)
  crop_box int32 [top, left, size] in source pixels ([0, 0, 0] for raw), face_found bool
Malformed input: data_pipelines/tfds_builders/common.py (skip + metadata, or `strict=True`).
The features decode with PIL/numpy only (tfds.data_source), no tensorflow.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import face_crop, video_io
from data_pipelines.tfds_builders import common


@dataclasses.dataclass(eq=False)
class MicroConfig(tfds.core.BuilderConfig):
  """image_size None keeps the original frames; crop 'face' | 'center'; span 'onset_offset' | 'whole'
  (every frame of the clip folder); annotation_file / frames_dir override the automatic search
  (paths relative to manual_dir, or absolute)."""
  image_size: int | None = 256
  crop: str = "face"
  increase: float = 0.3
  span: str = "onset_offset"
  strict: bool = False
  annotation_file: str | None = None
  frames_dir: str | None = None


def standard_configs(config_cls=MicroConfig, prefix: str = "", **fields) -> list:
  """The preset configs every micro-expression builder offers: face crops at 256 px, raw frames."""
  p = f"{prefix}_" if prefix else ""
  return [
      config_cls(name=f"{p}face256", description="Face crop (one box per clip), 256x256 PNG frames.",
                 image_size=256, crop="face", **fields),
      config_cls(name=f"{p}raw", description="Original frames, untouched bytes.", image_size=None, **fields),
  ]


_PASS_THROUGH = {"JPEG", "PNG", "BMP"}


def _raw_frame(path: Path, size_ref: list) -> bytes:
  """Original bytes of one frame when PIL decodes them as RGB / grey as-is, else a PNG re-encode."""
  from PIL import Image
  try:
    with Image.open(path) as im:
      im.load()
      ok = im.format in _PASS_THROUGH and im.mode in ("RGB", "L")
      size = im.size
  except (OSError, SyntaxError, ValueError) as e:
    raise video_io.VideoError(f"{path}: unreadable or corrupt image ({e})") from e
  if size_ref and size != size_ref[0][0]:
    raise video_io.VideoError(f"{path}: frame size {size[0]}x{size[1]} differs from "
                              f"{size_ref[0][0][0]}x{size_ref[0][0][1]} of {size_ref[0][1]}")
  size_ref.append((size, path))
  return path.read_bytes() if ok else common.encode_png(video_io.read_image(path))


class MicroExpressionBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the micro-expression builders (not a data set itself)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  FPS: float = 0.0
  HOMEPAGE = ""

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    shape = (size, size, 3) if size else (None, None, 3)
    image = tfds.features.Image(shape=shape, encoding_format="png" if size else None)
    text = tfds.features.Text
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "frames": tfds.features.Sequence(image),
            "clip_id": text(), "subject": text(), "video": text(),
            "onset": np.int32, "apex": np.int32, "offset": np.int32,
            "source_onset": np.int32, "source_apex": np.int32, "source_offset": np.int32,
            "action_units": text(), "aus": tfds.features.Sequence(np.int32),
            "emotion": text(), "emotion_3": text(),
            "fps": np.float32,
            "crop_box": tfds.features.Tensor(shape=(3,), dtype=np.int32),
            "face_found": np.bool_,
        }),
        homepage=self.HOMEPAGE,
        metadata=tfds.core.MetadataDict(),
    )

  # Subclasses: list the clips found under manual_dir, calling log.skip(item, reason) for bad ones.
  def _list_clips(self, manual_dir: Path, log: common.SkipLog) -> list[common.ClipSpec]:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    if cfg.span not in ("onset_offset", "whole"):
      raise ValueError(f"{self.name}: config span must be 'onset_offset' or 'whole', got {cfg.span!r}")
    if cfg.image_size is not None and cfg.crop not in ("face", "center"):
      raise ValueError(f"{self.name}: config crop must be 'face' or 'center', got {cfg.crop!r}")
    manual_dir = Path(dl_manager.manual_dir)
    log = common.SkipLog(self.name, cfg.strict)
    clips, seen = [], set()
    for clip in self._list_clips(manual_dir, log):
      if clip.clip_id in seen:
        log.skip(clip.clip_id, "duplicate clip (same subject / video / onset listed twice)")
        continue
      seen.add(clip.clip_id)
      clips.append(clip)
    if not clips:
      raise common.MalformedDataError(
          f"{self.name}: no usable clip under {manual_dir} ({len(log.items)} skipped: "
          f"{log.items[:3]}).\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    self.info.metadata.update(log.metadata())
    return {"test": self._generate_examples(clips, log)}

  def _generate_examples(self, clips, log):
    produced = 0
    for clip in clips:
      try:
        frames, box = self._encode_frames(clip, log)
      except video_io.VideoError as e:
        log.skip(clip.clip_id, f"unreadable frame: {e}")
        continue
      produced += 1
      yield clip.clip_id, {
          "frames": frames, "clip_id": clip.clip_id, "subject": clip.subject, "video": clip.video,
          "onset": clip.onset, "apex": clip.apex, "offset": clip.offset,
          "source_onset": clip.source_onset, "source_apex": clip.source_apex,
          "source_offset": clip.source_offset,
          "action_units": clip.action_units, "aus": common.parse_aus(clip.action_units),
          "emotion": clip.emotion.strip().lower(), "emotion_3": common.emotion_3(clip.emotion),
          "fps": clip.fps,
          "crop_box": np.asarray(box[:3], np.int32), "face_found": bool(box[3]),
      }
    self.info.metadata.update(log.metadata())
    if produced == 0:
      raise common.MalformedDataError(f"{self.name}: none of {len(clips)} clips could be read; "
                                      f"first problems: {log.items[:3]}")

  def _encode_frames(self, clip: common.ClipSpec, log: common.SkipLog):
    """Frames of one clip as stored bytes, reading one frame at a time (SAMM clips are long)."""
    cfg = self.builder_config
    if cfg.image_size is None:
      size_ref: list = []
      return [_raw_frame(p, size_ref) for p in clip.frames], (0, 0, 0, False)
    first = video_io.read_image(clip.frames[0])

    def read(path: Path) -> np.ndarray:
      frame = video_io.read_image(path)
      if frame.shape != first.shape:
        raise video_io.VideoError(f"{path}: frame size {frame.shape[1]}x{frame.shape[0]} differs from "
                                  f"{first.shape[1]}x{first.shape[0]} of {clip.frames[0]}")
      return frame

    if cfg.crop == "face":
      picks = sorted({len(clip.frames) // 2, len(clip.frames) - 1} - {0})
      refs = np.stack([first] + [read(clip.frames[i]) for i in picks])
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", face_crop.NoFaceWarning)
        box = face_crop.find_crop_box(refs, increase=cfg.increase, num_reference=len(refs))
      if not box.face_found:
        log.no_face.append(clip.clip_id)
    else:
      box = face_crop.center_box(first.shape[:2])
    out = [common.encode_png(face_crop.apply_box(first[None], box, cfg.image_size)[0])]
    for path in clip.frames[1:]:
      out.append(common.encode_png(face_crop.apply_box(read(path)[None], box, cfg.image_size)[0]))
    return out, box
