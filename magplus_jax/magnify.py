"""`magnify` mode: a user's video in, its motion magnified out (what FlowMag's inference script does).

  python -m magplus_jax.main --config configs/magnify.py --workdir W --config.input=clip.mp4 \
      --config.alpha=10 [--config.magnifier=magplus|eulerian|phase|phase_yiq|identity]

Writes, once everything is computed (a failure leaves earlier results in W as they were):
  W/magnified.mp4     the magnified clip at the input's resolution and fps
  W/magnified.npy     the same frames losslessly, [T, H, W, 3] float32 in [0, 1]
  W/side_by_side.mp4  input | magnified
  W/intensity.png     per-frame motion from frame 0 of input and output (mean, 95th percentile)
  W/magnify.json      what was done: alpha (and why), magnifier and weights, sizes, motion summary

Each output frame t is the magnifier applied to the two-frame clip (reference_t, frame_t):
  * reference "first": frame 0 (static magnification; output frame 0 = input frame 0);
  * reference "moving": the mean of the input frames within +-reference_window // 2 of t, so slow
    drift (a head turning) is followed and only the motion around it is magnified, as a temporal
    band-pass does for Eulerian methods.
Pairs go through in chunks of `chunk` frames (one compiled shape), so memory is bounded by a chunk
whatever the clip's length: a 600x600, 300-frame clip fits on a 24 GB CPU machine. The network is
fully convolutional; frames are edge-padded to its size multiple and cropped back.

alpha > 0 is the motion factor (alpha < 1 attenuates: with "magplus" the DeMagPlus network does it);
alpha = 0 calibrates it so that the clip's motion reaches `motion_target` px (0: the target kept
with the MagPlus weights, scaled from their training size to the clip's). `mask` (an image, white
= magnify) turns alpha into a per-pixel map 1 + (alpha - 1) * mask. `tta_steps` adapts MagPlus to the
clip first (FlowMag's test-time adaptation; the weights on disk are unchanged).
"""
from __future__ import annotations

import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from magplus_jax import adaptation, calibration, config_lib, generate, pretrained
from magplus_jax.models import magnifier as magnifier_lib
from magplus_jax.models import magnifiers as magnifiers_lib
from magplus_jax.models import resample
from magplus_jax.models.flow import get_flow

CHOICES = ("magplus", "eulerian", "phase", "phase_yiq", "identity")


def resolve(config, alpha: float):
  """(build config, description) of the learned network magnify uses at this alpha."""
  task = "magplus" if alpha >= 1.0 else "demag"
  given = config.magplus_checkpoint if task == "magplus" else config.demag_checkpoint
  return pretrained.resolve(task, given, config, max_repeats=int(config.max_repeats))


def build(config, alpha: float, resolved=None):
  """(Magnifier, description, build config or None) for config.magnifier at this alpha;
  resolved: resolve(config, alpha) where the caller already has it."""
  name = config.magnifier
  if name not in CHOICES:
    raise ValueError(f"config.magnifier={name!r}: choose one of {CHOICES}")
  if name == "magplus":
    cfg, where = resolved or resolve(config, alpha)
    return magnifier_lib.build(cfg), where, cfg
  if name == "identity":
    return magnifiers_lib.IDENTITY, "identity", None
  mcfg = {"name": "phase", "color_mode": "yiq"} if name == "phase_yiq" else {"name": name}
  return magnifiers_lib.get_magnifier(ml_collections.ConfigDict(mcfg)), name, None


def references(frames: np.ndarray, mode: str, window: int) -> np.ndarray | None:
  """[T, H, W, 3] -> the moving reference of every frame, or None for "first"."""
  if mode == "first":
    return None
  if mode != "moving":
    raise ValueError(f"config.reference={mode!r}: choose 'first' or 'moving'")
  if window < 1:
    raise ValueError(f"config.reference_window={window}: must be >= 1")
  c = np.concatenate([np.zeros_like(frames[:1], np.float64),
                      np.cumsum(frames, axis=0, dtype=np.float64)])
  t = np.arange(frames.shape[0])
  lo, hi = np.maximum(t - window // 2, 0), np.minimum(t + window // 2 + 1, frames.shape[0])
  return ((c[hi] - c[lo]) / (hi - lo)[:, None, None, None]).astype(np.float32)


def alpha_map(config, alpha: float, size: tuple[int, int]) -> np.ndarray | None:
  """[H, W] map 1 + (alpha - 1) * mask from config.mask, or None."""
  if not config.mask:
    return None
  from data_pipelines import video_io  # pylint: disable=g-import-not-at-top
  m = video_io.read_image(config.mask).mean(axis=-1, keepdims=True)
  m = np.asarray(resample.resize_bilinear(jnp.asarray(m)[None], size))[0, ..., 0]
  return (1.0 + (alpha - 1.0) * np.clip(m, 0.0, 1.0)).astype(np.float32)


def run(mag, frames: np.ndarray, alpha: float, refs: np.ndarray | None, amap, chunk: int,
        multiple: int) -> np.ndarray:
  """The magnified clip [T, H, W, 3], pair by pair in chunks (module doc)."""
  t, h, w, _ = frames.shape
  ph, pw = (-h) % multiple, (-w) % multiple
  pad = lambda x: np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge") if ph or pw else x
  a = np.full((chunk,), alpha, np.float32)
  if amap is not None:
    a = np.broadcast_to(np.pad(amap, ((0, ph), (0, pw)), mode="edge"),
                        (chunk, 2, h + ph, w + pw)).copy()
  out = np.empty_like(frames)
  for i in range(0, t, chunk):
    idx = np.minimum(np.arange(i, i + chunk), t - 1)  # the last chunk repeats its last frame
    ref = frames[:1].repeat(chunk, 0) if refs is None else refs[idx]
    pair = np.stack([pad(ref), pad(frames[idx])], axis=1)
    res = np.asarray(mag(jnp.asarray(pair), jnp.asarray(a)))[:, 1, :h, :w]
    n = min(chunk, t - i)
    out[i:i + n] = res[:n]
  if refs is None:
    out[0] = frames[0]
  return np.clip(out, 0.0, 1.0)


def _atomic_npy(path: str, arr: np.ndarray) -> None:
  tmp = path + ".tmp.npy"
  np.save(tmp, arr)
  os.replace(tmp, path)


def magnify(config: ml_collections.ConfigDict, workdir: str) -> dict:
  from data_pipelines import video_io  # pylint: disable=g-import-not-at-top
  config_lib.validate(config)
  if not config.input:
    raise ValueError("config.input is empty: give the video to magnify (--config.input=clip.mp4)")
  alpha = float(config.alpha)
  if not (np.isfinite(alpha) and alpha >= 0):
    raise ValueError(f"config.alpha={config.alpha}: alpha must be a finite number > 0 (or 0 to "
                     "calibrate it)")
  if int(config.chunk) < 1:
    raise ValueError(f"config.chunk={config.chunk}: must be >= 1")
  frames, fps = video_io.read_video(config.input, max_frames=config.max_frames or None)
  if frames.shape[0] < 2:
    raise ValueError(f"{config.input}: {frames.shape[0]} frame(s); at least 2 are needed")
  t, h, w, _ = frames.shape
  flow = get_flow(config.flow)
  input_flows = calibration.clip_flows(flow, jnp.asarray(frames))  # calibration and the curve
  motion = calibration.clip_motion(input_flows)
  why, resolved = "fixed by config.alpha", None
  if not alpha:
    target = float(config.motion_target)
    if not target:
      resolved = resolve(config, 1.0)  # calibrated alphas are >= 1: MagPlus's own network
      target = calibration.target_at(resolved[0].checkpoint, min(h, w),
                                     int(config.data.image_size))
      if not target:
        raise ValueError(f"no motion target in {resolved[0].checkpoint}; set "
                         "config.motion_target or config.alpha")
    alpha = calibration.choose_alpha(motion, target, float(config.data.alpha_max))
    why = f"calibrated: target {target:.3f} px / clip motion {motion:.3f} px"
  mag, where, cfg = build(config, alpha, resolved if alpha >= 1.0 else None)
  if config.tta_steps:
    if config.magnifier != "magplus":
      raise ValueError(f"config.tta_steps={config.tta_steps}: test-time adaptation needs the "
                       f"learned magnifier, not {config.magnifier!r}")
    mag = adaptation.adapt(mag, frames, alpha, flow, config.loss, steps=int(config.tta_steps),
                           learning_rate=float(config.tta_learning_rate))
  multiple = 2 ** (int(cfg.model["levels"]) - 1) if cfg is not None else 1
  refs = references(frames, config.reference, int(config.reference_window))
  amap = alpha_map(config, alpha, (h, w))
  logging.info("magnify %s: %d frames %dx%d at %.2f fps, alpha %.3f (%s), %s", config.input, t, h,
               w, fps, alpha, why, where)
  out = run(mag, frames, alpha, refs, amap, int(config.chunk), multiple)

  curves = generate.intensity(flow, {"input": frames, "magnified": out}, ("input", "magnified"),
                              flows={"input": input_flows})
  os.makedirs(workdir, exist_ok=True)
  _atomic_npy(os.path.join(workdir, "magnified.npy"), out)
  video_io.write_video(os.path.join(workdir, "magnified.mp4"), out, fps)
  video_io.write_video(os.path.join(workdir, "side_by_side.mp4"),
                       np.concatenate([frames, out], axis=2), fps)
  generate.plot_intensity(os.path.join(workdir, "intensity.png"), curves, alpha)
  peak = {k: v["peak_p95_px"] for k, v in curves.items()}
  summary = {"input": config.input, "frames": t, "height": h, "width": w, "fps": fps,
             "alpha": alpha, "alpha_reason": why, "magnifier": config.magnifier, "weights": where,
             "reference": config.reference, "mask": config.mask, "tta_steps": int(config.tta_steps),
             "clip_motion_px": motion, "peak_p95_px": peak,
             "measured_ratio": (peak["magnified"] / peak["input"]) if peak["input"] > 0 else None,
             "intensity": curves}
  tmp = os.path.join(workdir, "magnify.json.tmp")
  with open(tmp, "w") as f:
    json.dump(summary, f, indent=2)
  os.replace(tmp, os.path.join(workdir, "magnify.json"))
  logging.info("wrote magnified.mp4/.npy, side_by_side.mp4, intensity.png, magnify.json to %s; "
               "peak p95 motion %s px", workdir, {k: round(v, 3) for k, v in peak.items()})
  return summary
