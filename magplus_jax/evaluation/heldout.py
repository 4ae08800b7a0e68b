"""`evaluate` mode: magnifiers scored on held-out procedural pairs where the truth is known.

For each alpha in config.evaluate.alphas, config.evaluate.num_clips held-out pairs (split "test":
other images and seeds than training) are magnified by every magnifier:
  * "magplus": the trained network (config.evaluate.checkpoint, else this workdir's checkpoints,
    else the weights shipped in magplus_jax/pretrained);
  * "untrained": the same network freshly initialised (a learned magnifier must beat it);
  * "identity": no magnification; "eulerian", "phase": the classical baselines, when listed in
    config.evaluate.baselines.
Scores (magplus_jax/evaluation/metrics.py): motion_error = L1(F(I0, pred), alpha F(I0, I1)) in px,
mag_error = relative error of the measured magnification |F(I0, pred)| / |F(I0, I1)| against alpha,
ratio = that measured magnification, psnr / ssim against the exact magnified frame.
With config.evaluate.demag_checkpoint (or the shipped DeMagPlus with the shipped MagPlus), the round trip DeMagPlus(MagPlus(x, alpha), 1/alpha) is
scored against x: roundtrip_motion_error = L1(F(I0, result), F(I0, I1)) and its measured ratio
(1 is perfect). Results go to <workdir>/<config.evaluate.out> (JSON).
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from magplus_jax import config_lib, pretrained
from magplus_jax.evaluation import metrics
from magplus_jax.models import magnifier as magnifier_lib
from magplus_jax.models import magnifiers
from magplus_jax.models.flow import get_flow


def max_repeats(config) -> int:
  """config.generate.max_repeats where the config has one, else the single application."""
  gen = config.get("generate", None)
  return int((gen.get("max_repeats", 0) if gen is not None else 0)
             or magnifier_lib.DEFAULT_MAX_REPEATS)


def heldout_pairs(config, alpha: float, n: int) -> dict:
  """n held-out procedural pairs magnified by exactly `alpha` (numpy, stacked)."""
  from data_pipelines import procedural  # pylint: disable=g-import-not-at-top
  dc = ml_collections.ConfigDict(config.data.to_dict())
  dc.alpha_min = dc.alpha_max = float(alpha)
  spec = procedural.ProceduralSpec.from_config(dc)
  ex = [procedural.generate_example(spec, "test", config.seed, i) for i in range(n)]
  return {k: np.stack([e[k] for e in ex]) for k in ("ref", "frame", "magnified", "flow", "alpha")}


def _score(flow, mag: magnifiers.Magnifier, pairs: dict, alpha: float, batch_size: int) -> dict:
  # Not wrapped in jit here: every magnifier jits its own work, and MagPlus picks its number of
  # applications from the concrete alpha (refusing one beyond its reach).
  clip_fn = mag.magnify_clip

  @jax.jit
  def score(ref, frame, pred, exact, a):
    b = ref.shape[0]
    f = flow(jnp.concatenate([ref, ref]), jnp.concatenate([frame, pred]))
    ratio, _ = metrics.magnification_ratio(f[b:], f[:b])
    return {"motion_error": metrics.motion_error(f[b:], f[:b], a),
            "mag_error": metrics.mag_error(f[b:], f[:b], a), "ratio": ratio,
            "psnr": metrics.psnr(pred, exact), "ssim": metrics.ssim(pred, exact)}

  n = pairs["ref"].shape[0]
  sums = {}
  for i in range(0, n, batch_size):
    sl = slice(i, min(i + batch_size, n))
    ref, frame = jnp.asarray(pairs["ref"][sl]), jnp.asarray(pairs["frame"][sl])
    a = jnp.full((ref.shape[0],), alpha, jnp.float32)
    pred = clip_fn(mag.params, jnp.stack([ref, frame], axis=1), a)[:, 1]
    out = jax.device_get(score(ref, frame, pred, jnp.asarray(pairs["magnified"][sl]), a))
    for k, v in out.items():
      sums[k] = sums.get(k, 0.0) + float(v) * ref.shape[0] / n
  return sums


def _roundtrip(flow, mag, demag, pairs: dict, alpha: float, batch_size: int) -> dict:
  mag_fn, demag_fn = mag.magnify_clip, demag.magnify_clip  # jitted inside (see _score)
  n = pairs["ref"].shape[0]
  out = {"roundtrip_motion_error": 0.0, "roundtrip_ratio": 0.0}
  for i in range(0, n, batch_size):
    sl = slice(i, min(i + batch_size, n))
    clip = jnp.stack([jnp.asarray(pairs["ref"][sl]), jnp.asarray(pairs["frame"][sl])], axis=1)
    a = jnp.full((clip.shape[0],), alpha, jnp.float32)
    back = demag_fn(demag.params, mag_fn(mag.params, clip, a), 1.0 / a)
    b = clip.shape[0]
    f = flow(jnp.concatenate([clip[:, 0]] * 2), jnp.concatenate([clip[:, 1], back[:, 1]]))
    ratio, _ = metrics.magnification_ratio(f[b:], f[:b])
    err = jnp.mean(jnp.abs(f[b:] - f[:b]))
    out["roundtrip_motion_error"] += float(err) * b / n
    out["roundtrip_ratio"] += float(ratio) * b / n
  return out


def build_magnifiers(config, workdir: str) -> tuple[dict, ml_collections.ConfigDict | None, str]:
  """({name: Magnifier}, the DeMagPlus build config for the round trip or None, where MagPlus is
  from). MagPlus: config.evaluate.checkpoint, else this workdir's checkpoint, else the shipped
  weights; the round trip uses config.evaluate.demag_checkpoint, or the shipped DeMagPlus when
  MagPlus is the shipped one."""
  ev = config.evaluate
  reps = max_repeats(config)
  mag_cfg, where = pretrained.resolve("magplus", ev.checkpoint, config, search=(workdir,),
                                      max_repeats=reps)
  mags = {"magplus": magnifier_lib.build(mag_cfg)}
  demag_cfg = None
  if ev.demag_checkpoint:
    demag_cfg, _ = pretrained.resolve("demag", ev.demag_checkpoint, config, max_repeats=reps)
  elif mag_cfg.checkpoint == pretrained.path("magplus"):
    demag_cfg = pretrained.magnifier_config("demag", max_repeats=reps)
  for name in ev.baselines:
    if name == "untrained":
      mags["untrained"] = magnifier_lib.build(
          magnifier_lib.config_for(config, "", "untrained", max_repeats=reps))
    elif name == "identity":
      mags["identity"] = magnifiers.IDENTITY
    else:
      mags[name] = magnifiers.get_magnifier(ml_collections.ConfigDict({"name": name}))
  return mags, demag_cfg, where


def evaluate(config, workdir: str) -> dict:
  config_lib.validate(config)
  ev = config.evaluate
  flow = get_flow(config.flow)
  mags, demag_cfg, where = build_magnifiers(config, workdir)
  logging.info("MagPlus: %s", where)
  demag = magnifier_lib.build(demag_cfg) if demag_cfg is not None else None
  results = {name: {} for name in mags}
  for alpha in ev.alphas:
    pairs = heldout_pairs(config, alpha, ev.num_clips)
    for name, mag in mags.items():
      results[name][str(alpha)] = _score(flow, mag, pairs, alpha, ev.batch_size)
      logging.info("alpha %s %s: %s", alpha, name, results[name][str(alpha)])
    if demag is not None:
      results["magplus"][str(alpha)].update(
          _roundtrip(flow, mags["magplus"], demag, pairs, alpha, ev.batch_size))
  os.makedirs(workdir, exist_ok=True)
  out = os.path.join(workdir, ev.out)
  tmp = out + ".tmp"
  with open(tmp, "w") as f:
    json.dump({"flow": config.flow.name, "num_clips": ev.num_clips, "magplus": where,
               "results": results}, f, indent=2)
  os.replace(tmp, out)
  logging.info("wrote %s", out)
  print(format_table(results))
  return results


def format_table(results: dict) -> str:
  keys = ("motion_error", "mag_error", "ratio", "psnr", "ssim")
  lines = ["| magnifier | alpha | " + " | ".join(keys) + " |",
           "|" + "---|" * (len(keys) + 2)]
  for name, per_alpha in results.items():
    for alpha, m in per_alpha.items():
      lines.append(f"| {name} | {alpha} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |")
  return "\n".join(lines)
