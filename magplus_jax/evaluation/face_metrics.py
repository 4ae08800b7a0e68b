"""Face landmarks and face identity for scoring generated videos, through dlib (optional).

Why dlib: it is the one pip-installable face toolkit found to run beside this project's stack
(numpy 2, protobuf >= 6 for tensorflow 2.21) with its models shipped in a package:
  * `dlib-bin` (4 MB wheel): HOG frontal-face detector, shape predictor, face-recognition ResNet;
  * `face-recognition-models` (100 MB sdist): `shape_predictor_68_face_landmarks.dat` (iBUG 300-W
    68 points; its training data is licensed for non-commercial use) and
    `dlib_face_recognition_resnet_model_v1.dat` (128-d identity embedding; two photos of one person
    are typically < 0.6 apart, dlib's own threshold).
  `pip install -e ".[faces]"` (the project's optional extra: dlib-bin, face-recognition-models;
  no other dependencies are needed). The model
  files are located with importlib without importing `face_recognition_models` (its __init__ needs
  setuptools' pkg_resources, which a modern environment may lack).
mediapipe 0.10.21 (the last release shipping face-mesh models) pins protobuf < 5, which cannot
coexist with tensorflow 2.21 (protobuf >= 6.31); with protobuf 7 its face mesh fails at
construction, so it is not offered here.

Nothing here is imported by the project unless a face metric is asked for: `load()` returns None
and a reason when dlib or the models are missing, and the caller logs the reason and skips the
metric.

Small frames: dlib's HOG detector needs faces of about 80 px, so every frame is resized (bilinear,
data_pipelines.face_crop.resize_frames) to at least UPSCALE_TO pixels first; landmarks are mapped
back to the frame's own pixel coordinates (pixel centres at integers). One face box per clip, found
on its first frame (a per-frame box would add detection jitter to the landmark motion); no
detection -> a centred box of 70% of the side, and `FaceBox.detected` is False.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from typing import Any

import numpy as np

UPSCALE_TO = 256
LANDMARK_MODEL = "shape_predictor_68_face_landmarks.dat"
IDENTITY_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
SAME_PERSON_DISTANCE = 0.6  # dlib's threshold for its face-recognition embedding


@dataclasses.dataclass(frozen=True)
class FaceBox:
  rect: Any            # dlib.rectangle in upscaled pixel coordinates
  scale: float         # upscaled size / frame size
  detected: bool


@dataclasses.dataclass(frozen=True)
class DlibFace:
  dlib: Any
  detector: Any
  predictor: Any
  recognizer: Any

  def _upscale(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
    """frame [H, W, 3] float in [0, 1] -> (uint8 [S, S', 3], scale)."""
    from data_pipelines import face_crop  # pylint: disable=g-import-not-at-top
    h, w = frame.shape[:2]
    scale = max(1.0, UPSCALE_TO / min(h, w))
    if scale > 1.0:
      frame = face_crop.resize_frames(frame[None], (round(h * scale), round(w * scale)))[0]
    img = (np.clip(frame, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(img), scale

  def face_box(self, frame: np.ndarray) -> FaceBox:
    """The largest HOG detection in frame [H, W, 3] (or a centred fallback box)."""
    img, scale = self._upscale(frame)
    dets = list(self.detector(img, 1))
    if dets:
      return FaceBox(max(dets, key=lambda r: r.width() * r.height()), scale, True)
    h, w = img.shape[:2]
    side = int(0.7 * min(h, w))
    top, left = (h - side) // 2, (w - side) // 2
    return FaceBox(self.dlib.rectangle(left, top, left + side, top + side), scale, False)

  def landmarks(self, frames: np.ndarray, box: FaceBox | None = None) -> np.ndarray:
    """frames [T, H, W, 3] -> 68 landmarks per frame [T, 68, 2] (x, y) in frame pixels; one box
    (from frame 0 unless given) for the whole clip."""
    box = box or self.face_box(frames[0])
    out = []
    for frame in frames:
      img, scale = self._upscale(frame)
      shape = self.predictor(img, box.rect)
      pts = np.array([(p.x, p.y) for p in shape.parts()], np.float64)
      out.append((pts + 0.5) / scale - 0.5)
    return np.stack(out)

  def embeddings(self, frames: np.ndarray, box: FaceBox | None = None) -> np.ndarray:
    """frames [T, H, W, 3] -> 128-d identity embeddings [T, 128] (face aligned by the 68 points)."""
    box = box or self.face_box(frames[0])
    out = []
    for frame in frames:
      img, _ = self._upscale(frame)
      shape = self.predictor(img, box.rect)
      out.append(np.asarray(self.recognizer.compute_face_descriptor(img, shape), np.float64))
    return np.stack(out)


def _model_dir() -> str | None:
  spec = importlib.util.find_spec("face_recognition_models")
  if spec is None or not spec.submodule_search_locations:
    return None
  return os.path.join(list(spec.submodule_search_locations)[0], "models")


@functools.lru_cache(maxsize=1)
def load() -> tuple[DlibFace | None, str]:
  """(DlibFace, "") or (None, why not). Cached: the models take seconds to read."""
  try:
    import dlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None, ("dlib is not installed (`pip install -e '.[faces]'`, i.e. dlib-bin and "
                  "face-recognition-models); face landmark and identity metrics skipped")
  models = _model_dir()
  if models is None:
    return None, ("face-recognition-models is not installed (`pip install -e '.[faces]'`); "
                  "face landmark and identity metrics skipped")
  paths = [os.path.join(models, name) for name in (LANDMARK_MODEL, IDENTITY_MODEL)]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    return None, f"dlib model files missing: {missing}; face landmark and identity metrics skipped"
  return DlibFace(dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(paths[0]),
                  dlib.face_recognition_model_v1(paths[1])), ""


def landmark_motion(landmarks: np.ndarray) -> np.ndarray:
  """[T, 68, 2] -> [T]: mean displacement (px) of the points from their frame-0 positions."""
  return np.linalg.norm(landmarks - landmarks[:1], axis=-1).mean(axis=1)


def identity_distance(face: DlibFace, frames: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """[T] distances of each frame's embedding to the embedding of `reference` [H, W, 3]. The clip
  [T, H, W, 3] gets one face box (from its frame 0), the reference its own."""
  ref = face.embeddings(reference[None])[0]
  emb = face.embeddings(frames)
  return np.linalg.norm(emb - ref[None], axis=-1)
