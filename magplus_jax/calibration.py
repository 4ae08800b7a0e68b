"""alpha per clip: magnify a micro clip just enough to reach the backbone's macro motion range.

A clip's motion is the `percentile` (PERCENTILE, the 99th) of the flow magnitude relative to its
first frame, taken at its strongest frame (the apex). A high percentile, because micro-expressions
are local: a brow or a lip corner moves while most of the frame is still, and a median or 95th
percentile would measure the still part. The macro target is the same statistic measured on
macro training data (for the embedded default: the exact magnified training pairs, i.e. the motion
the magnifier learned to produce; for a real backbone: its training videos, e.g. VoxCeleb clips
through `estimate_target`). It is stored as `calibration.json` next to the checkpoints, so a
checkpoint carries its own target. alpha = clip(target / motion, 1, alpha_max); a fixed alpha in
the config overrides it. DeMagPlus then uses 1 / alpha.
"""
from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from magplus_jax.evaluation import metrics
from magplus_jax.models.flow import FlowEstimator

CALIBRATION_FILE = "calibration.json"
PERCENTILE = 99.0


def clip_flows(flow: FlowEstimator, frames: jax.Array, chunk: int = 16) -> jax.Array:
  """frames [T, H, W, 3] -> flows [T, H, W, 2] from frame 0 to every frame (chunked, jitted)."""
  fn = jax.jit(lambda p, a, b: flow.flow_fn(p, a, b))
  out = []
  for i in range(0, frames.shape[0], chunk):
    cur = frames[i:i + chunk]
    out.append(fn(flow.params, jnp.broadcast_to(frames[:1], cur.shape), cur))
  return jnp.concatenate(out)


def clip_motion(flows: jax.Array, percentile: float = PERCENTILE) -> float:
  """The clip's motion (px): the largest per-frame `percentile` flow magnitude."""
  _, p = metrics.intensity_curve(flows, percentile)
  return float(jnp.max(p))


def choose_alpha(motion: float, target: float, alpha_max: float) -> float:
  if not (math.isfinite(motion) and motion >= 0):
    raise ValueError(f"measured clip motion is {motion}: cannot calibrate alpha")
  if not (math.isfinite(target) and target > 0):
    raise ValueError(f"motion target {target} is invalid: it must be finite and > 0")
  if motion <= 1e-6:
    return float(alpha_max)
  return float(np.clip(target / motion, 1.0, alpha_max))


def estimate_target(flow: FlowEstimator, clips, percentile: float = PERCENTILE) -> float:
  """Median over macro clips (iterable of [T, H, W, 3]) of their motion: the backbone's range."""
  motions = [clip_motion(clip_flows(flow, jnp.asarray(c)), percentile) for c in clips]
  if not motions:
    raise ValueError("estimate_target got no clips")
  return float(np.median(motions))


def save(directory: str, target: float, **extra) -> str:
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, CALIBRATION_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump({"motion_target_px": float(target), **extra}, f, indent=2)
  os.replace(tmp, path)
  return path


def load_target(directory: str) -> float | None:
  path = os.path.join(directory, CALIBRATION_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return float(json.load(f)["motion_target_px"])


def target_at(directory: str, frame_side: int, default_size: int) -> float | None:
  """The stored target in pixels of a frame whose short side is frame_side: motion targets are
  measured at the training size (the run's config.json data.image_size where the checkpoint
  holds one, else default_size) and scale with the frame."""
  target = load_target(directory)
  if target is None:
    return None
  size = default_size
  cfg_path = os.path.join(directory, "config.json")
  if os.path.isfile(cfg_path):
    with open(cfg_path) as f:
      size = int(json.load(f).get("data", {}).get("image_size", default_size))
  return target * frame_side / float(size)
