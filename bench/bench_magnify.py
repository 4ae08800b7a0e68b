"""`magnify` mode at a user's resolution: wall time and peak memory of the real CLI.

    .venv/bin/python bench/bench_magnify.py [--size 600] [--frames 300] [--chunk 8]
        [--magnifiers magplus eulerian phase_yiq] [--out bench/results/magnify.json]

A clip of --frames frames at --size x --size px is made from matplotlib's grace_hopper.jpg moved by
a slow sub-pixel sinusoidal translation (written once as a PNG folder, lossless), then
`python -m magplus_jax.main --config configs/magnify.py` runs on it in a child process per
magnifier. Peak memory is the child's maximum resident set size (getrusage), i.e. everything the
mode holds: the decoded clip, its output, the flows for the intensity curves and XLA's buffers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_clip(folder: str, size: int, frames: int) -> None:
  from data_pipelines import face_crop, images, video_io  # pylint: disable=g-import-not-at-top
  from magplus_jax.models import resample  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  base = face_crop.resize_frames(images.grace_hopper()[None], (size + 8, size + 8))[0]
  img = jnp.asarray(base)[None]
  for t in range(frames):
    shift = 0.3 * np.sin(2 * np.pi * t / 30.0)
    grid = resample.pixel_grid(size, size)[None] + jnp.array([4.0 + shift, 4.0])
    frame = resample.sample_pixels(img, grid[..., 0], grid[..., 1])[0]
    video_io.write_image(os.path.join(folder, f"{t:04d}.png"), np.asarray(frame))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", type=int, default=600)
  p.add_argument("--frames", type=int, default=300)
  p.add_argument("--chunk", type=int, default=8)
  p.add_argument("--alpha", type=float, default=10.0)
  p.add_argument("--magnifiers", nargs="+", default=["magplus", "eulerian", "phase_yiq"])
  p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "magnify.json"))
  args = p.parse_args(argv)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    clip = os.path.join(tmp, "clip")
    os.makedirs(clip)
    make_clip(clip, args.size, args.frames)
    for name in args.magnifiers:
      work = os.path.join(tmp, name)
      cmd = [sys.executable, "-m", "magplus_jax.main", f"--config={ROOT}/configs/magnify.py",
             f"--workdir={work}", f"--config.input={clip}", f"--config.alpha={args.alpha}",
             f"--config.magnifier={name}", f"--config.chunk={args.chunk}"]
      before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
      t0 = time.perf_counter()
      proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
      wall = time.perf_counter() - t0
      peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
      row = {"magnifier": name, "rc": proc.returncode, "wall_s": wall,
             "frames_per_s": args.frames / wall, "peak_rss_bytes": peak * 1024,
             "peak_rss_note": "max over this and earlier children" if peak == before else ""}
      if proc.returncode == 0:
        with open(os.path.join(work, "magnify.json")) as f:
          summary = json.load(f)
        row["measured_ratio"] = summary["measured_ratio"]
      else:
        row["stderr"] = proc.stderr[-2000:]
      print(json.dumps(row), flush=True)
      rows.append(row)
  result = {"size": args.size, "frames": args.frames, "chunk": args.chunk, "alpha": args.alpha,
            "cpus": os.cpu_count(), "machine": platform.machine(), "rows": rows}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
