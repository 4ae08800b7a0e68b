"""MetaPortrait speed and memory: base 256 (warp + refine per frame) and temporal SR 256 -> 512.

  python bench/bench_metaportrait.py [--batch 1] [--clip 3] [--iters 2] [--out bench_metaportrait.json]

Weights are the golden recipe (tests/golden/golden_weights.py, or $MAGPLUS_GOLDEN_DIR) converted by
the real converter: same shapes and the same arithmetic as the released checkpoints, no download.
Runs on the default JAX backend (CPU here). Reports per model: compile time, seconds per call, frames
per second, XLA's compiled memory (arguments + temporaries) and the process peak RSS after the model
ran (weights, converter copies and XLA buffers together). Inputs are the fixture's stored inputs;
the base model is given explicit line images / landmarks (no flow, no line drawing: those are
measured separately as `inputs_*`).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import _runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from magplus_jax.models.backbones import metaportrait as mp  # noqa: E402
from magplus_jax.models.backbones import metaportrait_inputs as mpi  # noqa: E402
from magplus_jax.models.backbones import metaportrait_sr as mpsr  # noqa: E402
from magplus_jax.ports import metaportrait as port  # noqa: E402


def _golden(name):
  arrays, _, sd = _runner.golden_fixture(name)
  return arrays, sd


def _peak_rss_mb() -> float:
  return _runner.peak_rss_mib()


def _time(fn, args, iters):
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  xla_mb = None
  if mem is not None:
    xla_mb = (mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes) / 2**20
  jax.block_until_ready(compiled(*args))              # warm-up
  t0 = time.perf_counter()
  for _ in range(iters):
    jax.block_until_ready(compiled(*args))
  return compile_s, (time.perf_counter() - t0) / iters, xla_mb


def bench_base(batch: int, iters: int) -> dict:
  z, sd = _golden("metaportrait_base256")
  params = port.convert_state_dict({k[len("generator."):]: v for k, v in sd.items()})
  del sd
  gc.collect()
  nhwc = lambda a: jnp.asarray(np.moveaxis(a, -3, -1))
  rep = lambda a: jnp.broadcast_to(a, (batch,) + a.shape[1:])
  args = (params, rep(nhwc(z["source"])), rep(nhwc(z["source_line"])),
          rep(nhwc(z["driving_line"][0])), rep(jnp.asarray(z["driving_ldmk"][0])),
          rep(nhwc(z["mouth_mask"][0])), rep(jnp.asarray(z["source_id"])))
  fn = lambda p, *a: mp.bind(p)(*a)["prediction"]
  compile_s, per_call, xla_mb = _time(fn, args, iters)
  ldmk = np.asarray(z["driving_ldmk669"][0, 0])
  t0 = time.perf_counter()
  for _ in range(5):
    mpi.draw_lines_np(ldmk)
  draw_s = (time.perf_counter() - t0) / 5
  return {"model": "base 256", "batch": batch, "compile_s": compile_s, "s_per_call": per_call,
          "frames_per_s": batch / per_call, "xla_memory_mb": xla_mb,
          "peak_rss_mb": _peak_rss_mb(), "inputs_line_image_s": draw_s}


def bench_sr(clip: int, iters: int) -> dict:
  z, sd = _golden("metaportrait_sr512")
  params = port.convert_sr_state_dict(sd)
  del sd
  gc.collect()
  frames = jnp.asarray(np.moveaxis(z["input"][0], 1, -1))
  frames = jnp.concatenate([frames] * (-(-clip // frames.shape[0])))[:clip]
  fn = lambda p, c: mpsr.bind(p)(c)
  compile_s, per_call, xla_mb = _time(fn, (params, frames), iters)
  return {"model": "SR 256->512", "batch": clip, "compile_s": compile_s, "s_per_call": per_call,
          "frames_per_s": clip / per_call, "xla_memory_mb": xla_mb, "peak_rss_mb": _peak_rss_mb()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=1, help="base model: frames per call")
  parser.add_argument("--clip", type=int, default=3, help="SR: frames per clip (one call)")
  parser.add_argument("--iters", type=int, default=2)
  parser.add_argument("--skip", choices=("base", "sr"), default=None)
  parser.add_argument("--out", default="bench_metaportrait.json")
  args = parser.parse_args(argv)
  rows = []
  if args.skip != "base":
    rows.append(bench_base(args.batch, args.iters))
    gc.collect()
  if args.skip != "sr":
    rows.append(bench_sr(args.clip, args.iters))
  info = {"backend": jax.default_backend(), "devices": str(jax.devices()),
          "cpu_count": os.cpu_count(), "jax": jax.__version__, "rows": rows}
  print(f"{'model':14s} {'frames':>6s} {'compile s':>10s} {'s/call':>8s} {'frames/s':>9s} "
        f"{'XLA MB':>8s} {'peak RSS MB':>12s}")
  for r in rows:
    xla = f"{r['xla_memory_mb']:.0f}" if r["xla_memory_mb"] is not None else "n/a"
    print(f"{r['model']:14s} {r['batch']:6d} {r['compile_s']:10.1f} {r['s_per_call']:8.2f} "
          f"{r['frames_per_s']:9.3f} {xla:>8s} {r['peak_rss_mb']:12.0f}")
  with open(args.out, "w") as f:
    json.dump(info, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
