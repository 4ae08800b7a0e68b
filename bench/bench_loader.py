"""Throughput of the procedural train pipeline (examples/s) and the generator's per-example cost.

  python bench/bench_loader.py --out /tmp/bench_loader.json [--sizes 64,256] [--workers 0,2]

For each image size: the single-thread cost of one example (CPU and wall ms, measured by calling
the generator directly after warm-up), then examples/s of `make_dataset` (train split) with
num_workers in --workers (0 = in-process threads only). The machine load (1-min load average) is
recorded with the numbers, since these are CPU-bound.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402

from data_pipelines import images, loader, procedural  # noqa: E402


def per_example_ms(size: int, n: int) -> tuple[float, float]:
  spec = procedural.ProceduralSpec(image_size=size)
  images.warm("train")
  for i in range(3):
    procedural.generate_example(spec, "train", 0, 10_000 + i)
  c0, w0 = time.process_time(), time.perf_counter()
  for i in range(n):
    procedural.generate_example(spec, "train", 0, i)
  return (time.process_time() - c0) / n * 1e3, (time.perf_counter() - w0) / n * 1e3


def pipeline_rate(size: int, workers: int, batch: int, steps: int, threads: int) -> float:
  """Steady-state examples/s: sources pre-built in every process, then `steps` batches timed after
  the prefetch buffers have been filled and drained once (so buffered batches are not counted)."""
  cfg = ml_collections.ConfigDict(dict(image_size=size, num_workers=workers, num_threads=threads,
                                       prefetch_buffer_size=2, per_worker_buffer_size=1,
                                       warm_sources=True))
  it = iter(loader.make_dataset(cfg, split="train", seed=0, global_batch_size=batch))
  for _ in range(max(2, 2 * workers)):
    next(it)
  t0 = time.perf_counter()
  for _ in range(steps):
    next(it)
  return steps * batch / (time.perf_counter() - t0)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="", help="write the results here as JSON")
  ap.add_argument("--sizes", default="64,256")
  ap.add_argument("--workers", default="0,2")
  ap.add_argument("--threads", type=int, default=2, help="grain ReadOptions.num_threads")
  ap.add_argument("--examples", type=int, default=128,
                  help="examples timed per pipeline configuration (the direct timing of 256 px "
                       "examples uses a quarter of it)")
  args = ap.parse_args()
  rows = []
  for size in (int(s) for s in args.sizes.split(",")):
    batch = 16 if size <= 64 else 4
    steps = max(4, args.examples // batch)
    cpu_ms, wall_ms = per_example_ms(size, max(4, args.examples // (1 if size <= 64 else 4)))
    for workers in (int(w) for w in args.workers.split(",")):
      rate = pipeline_rate(size, workers, batch, steps, args.threads)
      rows.append(dict(image_size=size, num_workers=workers, batch=batch, examples_per_s=rate,
                       gen_cpu_ms=cpu_ms, gen_wall_ms=wall_ms, load_avg_1m=os.getloadavg()[0]))
      print(f"size {size:4d}  workers {workers}  batch {batch:3d}  {rate:8.1f} ex/s   "
            f"(one example: {cpu_ms:6.1f} ms CPU, {wall_ms:6.1f} ms wall; "
            f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus)", flush=True)
  result = dict(cpus=os.cpu_count(), threads=args.threads, rows=rows)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
  main()
