"""Reading prepared real-data builders: tfds.data_source (ArrayRecord, random access) + grain.

No tf.data and no tensorflow: tfds decodes the stored PNG / JPEG frames with PIL, and `decode_clip`
turns an example into NumPy arrays in the project's conventions (frames float32 RGB [0, 1]).

Typical use:
  prepare("casme2", data_dir=DATA, manual_dir=MANUAL)              # once
  ds = micro_expression_dataset("casme2", DATA)                     # grain.MapDataset
  clip = ds[0]; clip["frames"]  # [T, 256, 256, 3] float32; clip["onset"], clip["apex"], ...
Micro-expression clips differ in length, so they are not batched here. Examples come back in the
order of the ArrayRecord file (fixed for a prepared data set, but not the spreadsheet's order):
match clips on `clip_id`.
"""

from __future__ import annotations

import os

import numpy as np

MICRO_EXPRESSION_SETS = ("casme2", "samm", "smic", "casme3")
_DEFAULT_CONFIG = {"casme2": "face256", "samm": "face256", "casme3": "face256", "smic": "hs_face256",
                   "video_folders": "center256"}


def _full_name(name: str, config: str | None) -> str:
  base, _, cfg = name.partition("/")
  if base not in _DEFAULT_CONFIG:
    raise ValueError(f"unknown real data set {base!r}; known: {sorted(_DEFAULT_CONFIG)}")
  return f"{base}/{config or cfg or _DEFAULT_CONFIG[base]}"


def _builder(name: str, data_dir, config: str | None = None, **kwargs):
  import tensorflow_datasets as tfds
  import data_pipelines.tfds_builders  # noqa: F401  (registers the builders with tfds)
  return tfds.builder(_full_name(name, config), data_dir=os.fspath(data_dir), **kwargs)


def prepare(name: str, data_dir: str | os.PathLike, manual_dir: str | os.PathLike,
            config: str | None = None):
  """Builds `name` ('casme2', 'smic/vis_raw', 'video_folders', ...) from manual_dir into data_dir."""
  import tensorflow_datasets as tfds
  builder = _builder(name, data_dir, config)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder


def splits(name: str, data_dir: str | os.PathLike, config: str | None = None) -> list[str]:
  """The split names of a prepared builder (e.g. ['train', 'test']); never builds."""
  builder = _builder(name, data_dir, config)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"{_full_name(name, config)} is not prepared under {data_dir}; build it first with "
        f"data_pipelines.real_data.prepare({name!r}, data_dir, manual_dir)")
  return list(builder.info.splits)


def data_source(name: str, data_dir: str | os.PathLike, *, split: str, config: str | None = None):
  """Random-access source (len, [i]) of a prepared builder, via tfds.data_source; never builds."""
  import tensorflow_datasets as tfds
  builder = _builder(name, data_dir, config)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"{_full_name(name, config)} is not prepared under {data_dir}; build it first with "
        f"data_pipelines.real_data.prepare({name!r}, data_dir, manual_dir)")
  if split not in builder.info.splits:
    raise ValueError(f"{_full_name(name, config)} has no split {split!r}; it has {list(builder.info.splits)}")
  return tfds.data_source(_full_name(name, config), split=split, data_dir=os.fspath(data_dir),
                          download=False)


def micro_expression_source(name: str, data_dir: str | os.PathLike, *, config: str | None = None,
                            split: str = "test"):
  """A prepared micro-expression set ('casme2', 'samm', 'smic', 'casme3'; 'smic/nir_raw' ...)."""
  if name.partition("/")[0] not in MICRO_EXPRESSION_SETS:
    raise ValueError(f"{name!r} is not a micro-expression set; known: {MICRO_EXPRESSION_SETS}")
  return data_source(name, data_dir, split=split, config=config)


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def decode_clip(example: dict) -> dict:
  """tfds example -> frames [T, H, W, 3] float32 in [0, 1], text as str, numbers as NumPy."""
  out = {}
  for key, value in example.items():
    if key == "frames":
      frames = [np.asarray(f) for f in value]
      out[key] = np.stack(frames).astype(np.float32) / 255.0
    elif key == "aus":
      out[key] = np.asarray(list(value), np.int32).reshape(-1)
    elif isinstance(value, (bytes, str)):
      out[key] = _text(value)
    else:
      out[key] = np.asarray(value)
  return out


def micro_expression_dataset(name: str, data_dir: str | os.PathLike, *, config: str | None = None,
                             split: str = "test"):
  """grain.MapDataset of decoded micro-expression clips (see decode_clip); deterministic order."""
  import grain
  return grain.MapDataset.source(micro_expression_source(name, data_dir, config=config, split=split)
                                 ).map(decode_clip)


def video_clip_dataset(data_dir: str | os.PathLike, *, config: str | None = None, split: str = "train"):
  """grain.MapDataset of decoded fixed-length clips of the video_folders builder ([T, S, S, 3])."""
  import grain
  return grain.MapDataset.source(data_source("video_folders", data_dir, split=split, config=config)
                                 ).map(decode_clip)
