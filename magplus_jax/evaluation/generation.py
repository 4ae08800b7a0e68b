"""`evaluate_generation`: the whole pipeline scored on procedural micro clips whose motion is exact.

  python -m magplus_jax.main --config configs/evaluate_generation.py --workdir W

For each of `num_clips` procedural micro-expression clips (data_pipelines/micro_clips.py: a face
photo moved by 1-2 action units, sub-pixel apex amplitude, exact flow), the source face is animated
by `generate.run_pipeline` once per method:
  * "magplus":  MagPlus(alpha) -> backbone -> DeMagPlus(1/alpha)   (the method);
  * "backbone": the backbone alone on the raw micro driver (identity magnifiers), the baseline
    MagPlus must beat: a macro backbone tends to lose or distort sub-pixel motion;
  * "eulerian", "phase" (optional): the classical magnifiers in both roles;
  * "linear" (optional, analytic reference): I_0 + alpha (I_t - I_0) in both roles, the first-order
    (Taylor) magnifier with no temporal filter: near-exact for smooth sub-pixel motion, so it shows
    what the pipeline gives with a magnifier/attenuator pair that works, independent of training.
alpha is fixed (config.generate.alpha > 0) or calibrated per clip as `generate` does it.

Scores per method (motion always measured with config.flow, relative to frame 0, as metrics.py does):
  * ratio_p95 / ratio_mean: output motion over driver motion, by the peak (over frames) of the
    per-frame 95th-percentile flow magnitude, and by the mean over frames of the per-frame mean
    magnitude. 1 = the micro-expression keeps its intensity.
  * corr: Pearson correlation over frames of the output's per-frame p95 motion curve with the
    driver's (the onset-apex-offset time course is kept); None for a motionless curve.
  * lm_err_px / lm_gain / lm_corr: landmark motion. The clip's AU bump centres are landmarks whose
    displacement is known exactly (clip.flows sampled there); the output's displacement at the same
    pixels is its measured flow sampled there (resample.sample_pixels). err: mean |d_out - d_exact|
    over frames and landmarks; gain: sum(d_out . d_exact) / sum(|d_exact|^2) (1 = right amplitude
    and direction); corr: Pearson over all displacement components. The "driver" row gives the flow
    estimator's own error on the driver (the floor any method is measured against). Landmarks are
    placed in driver pixels, which is right for backbones that transfer motion pixel for pixel
    (warp) and an approximation for learned backbones (motion lands on the source's features).
  * psnr / ssim (motion fidelity): mean over frames t >= 1 of output_t against the ideal output
    ideal_t = output_0 moved by exactly the driver's motion (output_0 = the backbone's rest
    reconstruction of the source, bilinear backward warp by the exact inverse flow). The "static"
    row scores output_0 itself against ideal_t: a method below it did worse than no motion.
    Why not "first output frame vs the backbone's reconstruction": in run_pipeline output frame 0
    IS the backbone's rest frame, so that comparison is exact by construction. What it was meant
    to catch is reported per clip as rest_psnr / rest_ssim: output frame 0 against the source photo
    (the backbone's alteration of the face at rest; high for warp, which is the identity at rest).
  * src_ssim (always; JAX only): mean SSIM of the output frames against the source photo, an
    appearance-preservation proxy that needs no face model (the "driver" row: the driver's frame 0
    against the source, i.e. the level of another face in the default cross-identity setting).
    Micro motion lowers it only slightly; a backbone that alters the face lowers it a lot.
  * id_dist (dlib, optional): mean distance of the output frames' 128-d face embeddings to the
    source's (< 0.6: same person for dlib); the "driver" row is the driver face's distance (another
    person in the default cross-identity setting).
  * lm68_ratio / lm68_corr (dlib, optional): the 68-point landmarks' mean displacement from frame
    0, peak over frames relative to the driver's, and the curves' correlation. dlib's landmarks
    jitter by a good fraction of a pixel, so at micro amplitudes these are coarse; the exact
    landmarks above are the precise measure. (Face-mesh landmarks through mediapipe are not used:
    mediapipe 0.10.21, the last release shipping the mesh models, needs protobuf < 5, which cannot
    be installed beside tensorflow 2.21; see face_metrics.py.)
When dlib or its models are absent, id_dist and lm68_* are left out ("-" in the table), the log
and the table's header say why, and src_ssim remains as the identity proxy.
Results: <workdir>/<out>.json (per clip and mean over clips) and <out>.md (the table).
"""
from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from magplus_jax import calibration, config_lib, generate
from magplus_jax.evaluation import face_metrics, metrics
from magplus_jax.models import magnifier as magnifier_lib
from magplus_jax.models import magnifiers as magnifiers_lib
from magplus_jax.models import resample
from magplus_jax.models.backbones import get_backbone
from magplus_jax.models.flow import get_flow

METHODS = ("magplus", "backbone", "eulerian", "phase", "linear")
REFERENCE_ROWS = ("driver", "static")
TABLE_KEYS = ("ratio_p95", "ratio_mean", "corr", "lm_ratio", "lm_gain", "lm_err_px", "psnr",
              "ssim", "src_ssim", "id_dist", "lm68_ratio", "lm68_corr")
INVERSE_ITERS = 8
CLIP_FPS = 25.0  # micro_clips.make_clip's default frame rate (the clips here do not set one)


def _linear(params, frames, alpha):
  """frames [B, T, H, W, 3] -> I_0 + alpha (I_t - I_0), clipped to [0, 1]."""
  del params
  a = magnifiers_lib.broadcast_alpha(alpha, frames)
  return jnp.clip(frames[:, :1] + a * (frames - frames[:, :1]), 0.0, 1.0)


LINEAR = magnifiers_lib.Magnifier("linear", {}, _linear)


# ------------------------------------------------------------------------------------------ inputs
def make_case(ev, size: int, seed: int, index: int):
  """(clip, source [size, size, 3] float32, source description) for clip `index`."""
  from data_pipelines import face_crop, images, micro_clips, video_io  # pylint: disable=g-import-not-at-top
  clip = micro_clips.make_clip(
      {"image_size": size, "num_frames": ev.num_frames, "faces": tuple(ev.faces),
       "micro_amplitude_px": tuple(ev.micro_amplitude_px), "max_aus": ev.max_aus},
      seed=seed, index=index)
  face = clip.scene.key[0]
  if ev.source == "same":
    return clip, clip.frames[0].copy(), f"driver frame 0 ({face})"
  if ev.source == "other":
    other = [f for f in micro_clips.FACES if f != face][0]
    photo, desc = images.get_image((other, 0)), f"{other} (bundled photo, face crop)"
  else:
    photo, desc = video_io.read_image(ev.source), f"{ev.source} (face crop)"
  src, _ = face_crop.crop_image(photo, size)
  return clip, src.astype(np.float32), desc


# --------------------------------------------------------------------------- exact motion helpers
@jax.jit
def _sample(image, x, y):
  return resample.sample_pixels(image, x, y)


def sample_at(maps: np.ndarray, points: np.ndarray) -> np.ndarray:
  """maps [T, H, W, C], points [K, 2] (x, y px) -> [T, K, C] (bilinear)."""
  t = maps.shape[0]
  x = jnp.broadcast_to(jnp.asarray(points[:, 0], jnp.float32), (t, points.shape[0]))
  y = jnp.broadcast_to(jnp.asarray(points[:, 1], jnp.float32), (t, points.shape[0]))
  return np.asarray(_sample(jnp.asarray(maps), x, y))


@jax.jit
def ideal_frames(rest, flows):
  """rest [H, W, 3], exact forward flows [T, H, W, 2] (frame 0 -> t) -> [T, H, W, 3]: rest moved by
  the flows. The backward flow b_t(p) = -f_t(p + b_t(p)) is found by fixed-point iteration
  (converges fast: micro flows are smooth and far from folding); samples clamp to the border."""
  t, h, w, _ = flows.shape
  grid = resample.pixel_grid(h, w, flows.dtype)[None]

  def at(img, coords):
    x = jnp.clip(coords[..., 0], 0.0, w - 1.0)
    y = jnp.clip(coords[..., 1], 0.0, h - 1.0)
    return resample.sample_pixels(img, x, y)

  back = -flows
  for _ in range(INVERSE_ITERS):
    back = -at(flows, grid + back)
  return at(jnp.broadcast_to(rest[None], (t, h, w, 3)), grid + back)


def pearson(a, b) -> float | None:
  a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
  if a.std() < 1e-12 or b.std() < 1e-12:
    return None
  return float(np.corrcoef(a, b)[0, 1])


def landmark_scores(d: np.ndarray, exact: np.ndarray, measured: np.ndarray | None = None) -> dict:
  """d, exact, measured (the driver's flow-measured displacement) [T, K, 2], from frame 0 (frame 0
  is excluded from the means)."""
  d, exact = d[1:].astype(np.float64), exact[1:].astype(np.float64)
  energy = float((exact ** 2).sum())
  out = {"lm_err_px": float(np.linalg.norm(d - exact, axis=-1).mean()),
         "lm_gain": float((d * exact).sum() / energy) if energy > 0 else None,
         "lm_corr": pearson(d, exact)}
  if measured is not None:
    out["lm_ratio"] = _ratio(np.linalg.norm(d, axis=-1).mean(),
                             np.linalg.norm(measured[1:], axis=-1).mean())
  return out


# ---------------------------------------------------------------------------------------- scoring
# The metrics run eagerly where they are defined; jitted once here, a clip costs a few compiles
# instead of one per primitive.
_intensity_curve = jax.jit(metrics.intensity_curve)
_psnr = jax.jit(metrics.psnr)
_ssim = jax.jit(metrics.ssim)


def _motion(flow, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(flows [T, H, W, 2], mean [T], p95 [T]) of frames relative to frame 0."""
  flows = calibration.clip_flows(flow, jnp.asarray(frames))
  mean, p95 = (np.asarray(x, np.float64) for x in _intensity_curve(flows))
  return np.asarray(flows), mean, p95


def _ratio(num: float, den: float) -> float | None:
  return float(num / den) if den > 1e-9 else None


def _fidelity(frames: np.ndarray, ideal: np.ndarray) -> dict:
  """PSNR of the whole clip (frames 1.. stacked into one image, so still frames do not dominate
  the mean) and mean SSIM over frames 1.. ."""
  x, y = jnp.asarray(frames[1:]), jnp.asarray(ideal[1:])
  stack = lambda a: a.reshape((1, -1) + a.shape[2:])
  return {"psnr": float(_psnr(stack(x), stack(y))), "ssim": float(_ssim(x, y))}


def _source_ssim(frames: np.ndarray, source: np.ndarray) -> float:
  """Mean SSIM of frames [T, H, W, 3] against the source photo [H, W, 3]."""
  x = jnp.asarray(frames)
  return float(_ssim(x, jnp.broadcast_to(jnp.asarray(source)[None], x.shape)))


def _face_scores(face, frames, source, drv_lm68_curve) -> dict:
  if face is None:
    return {}
  ids = face_metrics.identity_distance(face, frames, source)
  curve = face_metrics.landmark_motion(face.landmarks(frames))
  return {"id_dist": float(ids.mean()),
          "lm68_peak_px": float(curve.max()),
          "lm68_ratio": _ratio(curve.max(), drv_lm68_curve.max()),
          "lm68_corr": pearson(curve, drv_lm68_curve)}


def evaluate_clip(clip, source: np.ndarray, methods: dict, alpha: float, backbone, flow,
                  chunk: int, face=None, driver_motion=None, on_output=None) -> dict:
  """Scores every method on one clip. methods: name -> (magnifier, attenuator) (Magnifiers);
  face: a face_metrics.DlibFace or None; driver_motion: `_motion(flow, clip.frames)` if the caller
  already has it; on_output(name, clips): called with each method's run_pipeline clips.

  Returns {"rows": {name: scores}, "clip": {...}} with the reference rows "driver" and "static".
  """
  if not methods:
    raise ValueError("evaluate_clip: no methods to evaluate")
  driver = clip.frames
  points = np.array([b[:2] for b in clip.bumps], np.float32)
  exact = sample_at(clip.flows, points)
  drv_flows, drv_mean, drv_p95 = driver_motion or _motion(flow, driver)
  drv_lm = sample_at(drv_flows, points)
  _, exact_p95 = (np.asarray(x) for x in _intensity_curve(jnp.asarray(clip.flows)))
  drv_lm68 = face_metrics.landmark_motion(face.landmarks(driver)) if face is not None else None
  rows = {"driver": {"peak_p95_px": float(drv_p95.max()), "ratio_p95": 1.0, "ratio_mean": 1.0,
                     "corr": 1.0, **landmark_scores(drv_lm, exact, drv_lm),
                     "src_ssim": _source_ssim(driver[:1], source)}}
  if face is not None:
    rows["driver"]["id_dist"] = float(face_metrics.identity_distance(face, driver[:1], source)[0])
    rows["driver"]["lm68_peak_px"] = float(drv_lm68.max())
  rest = None
  for name, (mag, demag) in methods.items():
    clips = generate.run_pipeline(source, driver, alpha, mag, backbone, demag, chunk)
    if on_output is not None:
      on_output(name, clips)
    out = clips["output"]
    if rest is None:
      rest = out[0]
      ideal = np.asarray(ideal_frames(jnp.asarray(rest), jnp.asarray(clip.flows)))
      rows["static"] = {**_fidelity(np.broadcast_to(rest, out.shape), ideal), "ratio_p95": 0.0,
                        "ratio_mean": 0.0}
    out_flows, mean, p95 = _motion(flow, out)
    # Identity magnifiers leave a clip unchanged: its motion is already known.
    known = {"magnified": (driver, drv_p95), "generated": (out, p95)}
    peaks = {k: float((known[k][1] if np.array_equal(clips[k], known[k][0])
                       else _motion(flow, clips[k])[2]).max()) for k in known}
    rows[name] = {
        "peak_p95_px": float(p95.max()),
        "ratio_p95": _ratio(p95.max(), drv_p95.max()),
        "ratio_mean": _ratio(mean.mean(), drv_mean.mean()),
        "corr": pearson(p95, drv_p95), "corr_mean": pearson(mean, drv_mean),
        **landmark_scores(sample_at(out_flows, points), exact, drv_lm),
        **_fidelity(out, ideal),
        "src_ssim": _source_ssim(out, source),
        "magnified_ratio": _ratio(peaks["magnified"], drv_p95.max()),
        "generated_ratio": _ratio(peaks["generated"], drv_p95.max()),
        **_face_scores(face, out, source, drv_lm68)}
  rest_x, src = jnp.asarray(rest[None]), jnp.asarray(source[None])
  info = {"au": list(clip.au), "apex_index": int(clip.apex_index), "face": clip.scene.key[0],
          "amplitude_px": float(clip.amplitude), "exact_peak_p95_px": float(exact_p95.max()),
          "alpha": float(alpha), "landmarks": points.tolist(),
          "rest_psnr": float(_psnr(rest_x, src)), "rest_ssim": float(_ssim(rest_x, src))}
  return {"rows": rows, "clip": info}


def summarize(per_clip: list[dict]) -> dict:
  """Mean over clips of every numeric score, per row (None values skipped; `n` counts clips)."""
  out = {}
  for res in per_clip:
    for row, scores in res["rows"].items():
      acc = out.setdefault(row, {})
      for k, v in scores.items():
        if v is not None and isinstance(v, (int, float)) and math.isfinite(v):
          acc.setdefault(k, []).append(float(v))
  return {row: {k: float(np.mean(v)) for k, v in acc.items()} | {"n": len(per_clip)}
          for row, acc in out.items()}


def format_table(summary: dict) -> str:
  rows = [r for r in summary if r not in REFERENCE_ROWS] + [r for r in REFERENCE_ROWS if r in summary]
  lines = ["| method | " + " | ".join(TABLE_KEYS) + " |", "|" + "---|" * (len(TABLE_KEYS) + 1)]
  digits = {"psnr": 2, "ssim": 5}  # micro motion changes few pixels: SSIM stays near 1
  for row in rows:
    cells = [f"{summary[row][k]:.{digits.get(k, 3)}f}" if k in summary[row] else "-"
             for k in TABLE_KEYS]
    lines.append(f"| {row} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the job
def validate(config) -> None:
  """The base checks (config_lib.validate) plus this mode's fields; ValueError naming the field."""
  config_lib.validate(config)
  ev = config.evaluate_generation
  if int(ev.num_clips) < 1:
    raise ValueError(f"config.evaluate_generation.num_clips={ev.num_clips}: must be >= 1")
  if int(ev.num_frames) < 4:
    raise ValueError(f"config.evaluate_generation.num_frames={ev.num_frames}: must be >= 4 "
                     "(onset, apex, offset)")
  bad = [m for m in ev.methods if m not in METHODS]
  if not ev.methods or bad:
    raise ValueError(f"config.evaluate_generation.methods={tuple(ev.methods)}: choose from {METHODS}")
  if ev.source not in ("same", "other") and not os.path.isfile(ev.source):
    raise FileNotFoundError(f"config.evaluate_generation.source={ev.source!r}: not 'same', 'other' "
                            "or an existing image file")
  a = config.generate.alpha
  if a and not (math.isfinite(a) and a > 0):
    raise ValueError(f"config.generate.alpha={a}: alpha must be a finite number > 0 (or 0 to "
                     "calibrate it per clip)")


def _method_factory(config, workdir: str):
  """(methods_for(alpha) -> {name: (magnifier, attenuator)}, MagPlus dir or "", description)."""
  ev = config.evaluate_generation
  fixed = {}
  mag_cfg, demag_cfg, how = None, None, "no MagPlus"
  for name in ev.methods:
    if name == "backbone":
      fixed[name] = (magnifiers_lib.IDENTITY, magnifiers_lib.IDENTITY)
    elif name == "linear":
      fixed[name] = (LINEAR, LINEAR)
    elif name in ("eulerian", "phase"):
      m = magnifiers_lib.get_magnifier(ml_collections.ConfigDict({"name": name}))
      fixed[name] = (m, m)
  if "magplus" in ev.methods:
    mag_cfg, demag_cfg, how = generate.magnifier_configs(config, workdir)
  cache = {}

  def methods_for(alpha: float) -> dict:
    out = {}
    for name in ev.methods:
      if name != "magplus":
        out[name] = fixed[name]
        continue
      reps = magnifier_lib.repeats_for(alpha, mag_cfg.alpha_max, config.generate.max_repeats)
      if reps not in cache:
        with_reps = lambda c: ml_collections.ConfigDict({**c.to_dict(), "repeats": reps})  # pylint: disable=cell-var-from-loop
        cache[reps] = (magnifier_lib.build(with_reps(mag_cfg)),
                       magnifier_lib.build(with_reps(demag_cfg)))
      out[name] = cache[reps]
    return out

  return methods_for, (mag_cfg.checkpoint if mag_cfg is not None else ""), how


def _choose_alpha(config, motion: float, target: float) -> tuple[float, str]:
  gen = config.generate
  if gen.alpha:
    return float(gen.alpha), "fixed by config.generate.alpha"
  if not target:
    raise ValueError("no motion target to calibrate alpha: set config.generate.alpha or "
                     "config.generate.motion_target (or give a MagPlus checkpoint with "
                     f"{calibration.CALIBRATION_FILE})")
  alpha = calibration.choose_alpha(motion, target, config.data.alpha_max ** gen.max_repeats)
  return alpha, f"calibrated: target {target:.3f} px / clip motion {motion:.3f} px"


def evaluate_generation(config, workdir: str, methods_for=None) -> dict:
  """Runs the evaluation described in the module docstring; returns the JSON it writes.

  methods_for: optional alpha -> {name: (magnifier, attenuator)} replacing the magnifiers the
  config names (e.g. analytic stand-ins in tests); alpha must then be fixed or a motion target given.
  """
  validate(config)
  ev = config.evaluate_generation
  flow = get_flow(config.flow)
  backbone = get_backbone(config.backbone, flow)
  size = backbone.image_size
  os.makedirs(workdir, exist_ok=True)
  if methods_for is None:
    methods_for, mag_dir, how = _method_factory(config, workdir)
  else:
    mag_dir, how = "", "given by the caller"
  target = config.generate.motion_target or (calibration.load_target(mag_dir) if mag_dir else 0.0)
  face, face_status = None, "off (config.evaluate_generation.face_metrics=False)"
  if ev.face_metrics:
    face, why = face_metrics.load()
    face_status = "dlib" if face is not None else why
    if face is None:
      logging.warning("%s", why)
  per_clip = []
  for i in range(int(ev.num_clips)):
    clip, source, source_desc = make_case(ev, size, config.seed, i)
    motion = _motion(flow, clip.frames)
    alpha, why = _choose_alpha(config, float(motion[2].max()), target or 0.0)
    videos = {}  # method -> its clips, for the first ev.videos clips
    keep = videos.__setitem__ if i < int(ev.get("videos", 0)) else None
    res = evaluate_clip(clip, source, methods_for(alpha), alpha, backbone, flow,
                        config.generate.chunk, face, driver_motion=motion, on_output=keep)
    res["clip"].update(index=i, source=source_desc, alpha_reason=why)
    if videos:
      res["clip"].update(videos=write_videos(workdir, f"{ev.out}_clip{i}", source, videos),
                         video_panel=generate.PANEL)
    per_clip.append(res)
    logging.info("clip %d (%s, %.3f px, alpha %.2f): %s", i, "+".join(clip.au), clip.amplitude,
                 alpha, {m: {k: round(v, 3) for k, v in r.items()
                             if k in ("ratio_p95", "corr", "lm_ratio", "psnr") and v is not None}
                         for m, r in res["rows"].items()})
  summary = summarize(per_clip)
  result = {"backbone": backbone.name, "image_size": size, "flow": flow.name,
            "magnifiers": how, "face_metrics": face_status, "methods": list(ev.methods),
            "num_clips": int(ev.num_clips), "num_frames": int(ev.num_frames),
            "summary": summary, "clips": per_clip}
  write_results(workdir, ev.out, result)
  print(format_table(summary))
  return result


def write_videos(workdir: str, stem: str, source: np.ndarray, outputs: dict) -> list[str]:
  """<workdir>/<stem>_<method>.mp4 for each method's run_pipeline clips (generate.PANEL layout, at
  the procedural clips' 25 fps); returns the file names."""
  from data_pipelines import video_io  # pylint: disable=g-import-not-at-top
  names = []
  for name, clips in outputs.items():
    names.append(f"{stem}_{name}.mp4")
    video_io.write_video(os.path.join(workdir, names[-1]), generate.side_by_side(source, clips),
                         CLIP_FPS)
  return names


def write_results(workdir: str, out: str, result: dict) -> dict[str, str]:
  paths = {"json": os.path.join(workdir, out + ".json"), "markdown": os.path.join(workdir, out + ".md")}
  alphas = [c["clip"]["alpha"] for c in result["clips"]]
  rest = [c["clip"]["rest_psnr"] for c in result["clips"]]
  rest_ssim = [c["clip"]["rest_ssim"] for c in result["clips"]]
  if result["face_metrics"] == "dlib":
    faces = ("id_dist: dlib 128-d face embedding distance to the source (< 0.6 same person); "
             "lm68_*: dlib 68-point landmark motion, peak ratio to the driver's and correlation.")
  else:
    faces = (f"Face models unavailable ({result['face_metrics']}): id_dist and lm68_* are not "
             "measured; src_ssim is the JAX-only identity proxy.")
  text = "\n".join([
      f"## Generation on procedural micro clips ({result['num_clips']} clips x "
      f"{result['num_frames']} frames, {result['image_size']} px)", "",
      f"backbone `{result['backbone']}`, flow `{result['flow']}`; magnifiers: {result['magnifiers']}; "
      f"alpha {min(alphas):.2f}-{max(alphas):.2f}; first output frame (the backbone's rest frame, "
      f"the same for every method) vs source: PSNR {np.mean(rest):.1f} dB, SSIM "
      f"{np.mean(rest_ssim):.4f}.", "",
      format_table(result["summary"]), "",
      "Means over clips. ratio_*: output / driver motion (1 keeps the intensity); corr: per-frame "
      "motion curves (p95); lm_*: motion at the AU centres (exact landmarks; gain 1 = exact "
      "amplitude); psnr/ssim: against the rest frame moved by the exact motion (`static` = no "
      "motion); src_ssim: output frames vs the source photo (`driver`: another face). " + faces +
      " Definitions: magplus_jax/evaluation/generation.py.", ""])
  for key, path in paths.items():
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      if key == "json":
        json.dump(result, f, indent=1)
      else:
        f.write(text)
    os.replace(tmp, path)
  logging.info("wrote %s", ", ".join(paths.values()))
  return paths


# ------------------------------------------------------------------------------------------- CLI
def run_cli(job) -> None:
  """`python -m ...` for a job(config, workdir) with main.py's flags and error handling (one line,
  exit status 2 for the command line, 1 for the job; --debug shows the traceback)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from magplus_jax import main as main_lib  # pylint: disable=g-import-not-at-top

  def _main(argv):
    del argv
    logging.get_absl_handler().addFilter(main_lib._QuietLibraries())  # pylint: disable=protected-access
    if not main_lib._WORKDIR.value:  # pylint: disable=protected-access
      main_lib._fail("bad command line: ", ValueError("--workdir is required"), 2)  # pylint: disable=protected-access
    try:
      job(main_lib._CONFIG.value, main_lib._WORKDIR.value)  # pylint: disable=protected-access
    except main_lib.USER_ERRORS as e:
      if main_lib._DEBUG.value:  # pylint: disable=protected-access
        raise
      logging.error("%s", e)
      main_lib._fail("error: ", e, 1)  # pylint: disable=protected-access

  app.run(_main, flags_parser=main_lib._parse_flags)  # pylint: disable=protected-access


if __name__ == "__main__":
  run_cli(evaluate_generation)
