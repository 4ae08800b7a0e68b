"""Speed and peak memory of the whole generation pipeline (generate.run_pipeline).

    .venv/bin/python bench/bench_pipeline.py [--cases warp128 warp256 fomm256] [--frames 16]
        [--chunk 8] [--reps 2] [--model default|flowmag] [--out bench/results/pipeline.json]

What is timed: `run_pipeline(source, driving, alpha, MagPlus, backbone, DeMagPlus, chunk)` on one
clip of --frames frames (MagPlus and DeMagPlus are the U-Net of configs/default.py, or FlowMag's
size with --model flowmag, untrained: speed does not depend on the weights), i.e. per chunk one
jitted call doing magnify -> animate -> attenuate, plus the backbone's rest frame. frames/s =
frames / best wall time over --reps calls after a warm-up call; the warm-up (jit compile) is
reported as first_call_s. cpu_s_per_frame is the process's CPU time (all threads) per frame in
the best call: on a shared machine it says more than wall time. run_pipeline builds its jitted chunk function anew on every call (so
every call would recompile); the bench memoises generate.make_chunk_fn per (magnifier, backbone)
so the timed calls reuse the compiled function, which is what "compile excluded" means here.

Cases (each in a fresh subprocess, so the peak memory is that case's alone: ru_maxrss of the
process = host RAM, what a CPU run uses; on an accelerator also the device's peak_bytes_in_use):
  * warp128, warp256: the training-free warp backbone with the pyramid_lk flow (configs/generate.py
    defaults) at 128 / 256 px;
  * fomm256: FOMM with the vox-256 configuration and the golden-recipe weights
    (tests/golden/fomm_vox256.npz + golden_weights.py through tests/golden_utils.py), converted by
    magplus_jax.ports.fomm; skipped with a message if the fixture or the port is missing.
Inputs are random frames (the pipeline has no data-dependent control flow).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import _runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CASES = {"warp128": ("warp", 128), "warp256": ("warp", 256), "fomm256": ("fomm", 256)}


def _fomm_backbone():
  """FOMM vox-256 with the golden-recipe weights, or raises RuntimeError saying why not."""
  try:
    from magplus_jax.models.backbones import Backbone, fomm  # pylint: disable=g-import-not-at-top
    from magplus_jax.ports import fomm as port  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise RuntimeError(f"FOMM port not available: {e}") from e
  try:
    _, meta, sd = _runner.golden_fixture("fomm_vox256")
  except (FileNotFoundError, AssertionError) as e:
    raise RuntimeError(f"FOMM golden fixture not usable: {e}") from e
  split = lambda p: _runner.submodule(sd, p)
  model_params = fomm.model_config(meta["config"])
  model = fomm.from_state_dict(model_params, port.convert_state_dict(
      split("generator."), split("kp_detector."), model_params))
  animate, params = fomm.make_animate_fn(model, relative=True, adapt_movement_scale=True)
  return Backbone(name="fomm", params=params, animate=animate, image_size=256)


def _chunk_flops(compiled: dict, mag, backbone, demag, source, driving, chunk: int) -> float | None:
  """XLA's FLOP count of one jitted chunk call (magnify -> animate -> attenuate), per frame."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  (fn,) = compiled.values()
  src = jnp.asarray(source)[None]
  d_ref = jnp.asarray(driving[:1])
  part = jnp.asarray(driving[1:1 + chunk])[None]
  cost = fn.lower(mag.params, backbone.params, demag.params, src, d_ref, part, src,
                  jnp.full((1,), 4.0, jnp.float32)).compile().cost_analysis() or {}
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost["flops"]) / chunk if "flops" in cost else None


def run_case(case: str, frames: int, chunk: int, reps: int, model: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from magplus_jax import config_lib, generate  # pylint: disable=g-import-not-at-top
  from magplus_jax.models import magnifier as magnifier_lib  # pylint: disable=g-import-not-at-top
  from magplus_jax.models.backbones import get_backbone  # pylint: disable=g-import-not-at-top
  from magplus_jax.models.flow import get_flow  # pylint: disable=g-import-not-at-top

  kind, size = CASES[case]
  config = config_lib.base_config()
  if model == "flowmag":
    config.model.update(dict(levels=5, width=64, norm="batch", output="sigmoid"))
  flow = get_flow(config.flow)
  if kind == "warp":
    backbone = get_backbone(ml_collections.ConfigDict(dict(name="warp", image_size=size)), flow)
  else:
    backbone = _fomm_backbone()
  mag = magnifier_lib.build(ml_collections.ConfigDict(dict(
      name="magplus", model=config.model.to_dict(), checkpoint="", seed=0, label="magplus")))
  demag = magnifier_lib.build(ml_collections.ConfigDict(dict(
      name="magplus", model=config.model.to_dict(), checkpoint="", seed=1, label="demag")))

  compiled = {}
  original = generate.make_chunk_fn

  def memoised(m, b, d):
    key = (id(m), id(b), id(d))
    if key not in compiled:
      compiled[key] = original(m, b, d)
    return compiled[key]

  generate.make_chunk_fn = memoised
  rng = np.random.default_rng(0)
  source = rng.uniform(0, 1, (size, size, 3)).astype(np.float32)
  driving = rng.uniform(0, 1, (frames, size, size, 3)).astype(np.float32)
  t0 = time.perf_counter()
  generate.run_pipeline(source, driving, 4.0, mag, backbone, demag, chunk)
  first = time.perf_counter() - t0
  times, cpu = [], []
  for _ in range(reps):
    t0, c0 = time.perf_counter(), time.process_time()
    out = generate.run_pipeline(source, driving, 4.0, mag, backbone, demag, chunk)
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  assert np.isfinite(out["output"]).all(), "non-finite pipeline output"
  flops = _chunk_flops(compiled, mag, backbone, demag, source, driving, chunk)
  dev = jax.devices()[0]
  stats = dev.memory_stats() or {}
  return {"case": case, "backbone": backbone.name, "image_size": size, "frames": frames,
          "chunk": chunk, "model": model, "device": str(dev), "first_call_s": first,
          "best_s": min(times), "frames_per_s": frames / min(times),
          "cpu_s_per_frame": min(cpu) / frames, "flops_per_frame": flops,
          "device_peak_bytes": stats.get("peak_bytes_in_use")}


def child(args) -> None:
  try:
    out = run_case(args.case, args.frames, args.chunk, args.reps, args.model)
  except RuntimeError as e:
    out = {"case": args.case, "skipped": str(e)}
  out["peak_rss_mib"] = _runner.peak_rss_mib()
  _runner.emit(out)


def format_table(results: list[dict]) -> str:
  lines = ["| case | device | frames/s | best s/clip | CPU s/frame | GFLOP/frame | first call s | "
           "peak RSS MiB | device peak MiB |", "|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    if "skipped" in r or "failed" in r:
      lines.append(f"| {r['case']} | {r.get('skipped') or r.get('failed')} | | | | | | | |")
      continue
    dev = r.get("device_peak_bytes")
    dev = f"{dev / 2**20:.0f}" if dev else "-"
    gf = f"{r['flops_per_frame'] / 1e9:.2f}" if r.get("flops_per_frame") else "-"
    lines.append(f"| {r['case']} | {r['device']} | {r['frames_per_s']:.2f} | {r['best_s']:.2f} | "
                 f"{r.get('cpu_s_per_frame', float('nan')):.2f} | {gf} | {r['first_call_s']:.1f} | "
                 f"{r['peak_rss_mib']:.0f} | {dev} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
  parser.add_argument("--frames", type=int, default=16)
  parser.add_argument("--chunk", type=int, default=8)
  parser.add_argument("--reps", type=int, default=2)
  parser.add_argument("--model", default="default", choices=("default", "flowmag"))
  parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "pipeline.json"),
                      help="write the results as JSON here ('' = none)")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--case", default="warp128", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args)
    return
  print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs; {args.frames} frames, chunk "
        f"{args.chunk}, magnifier model {args.model}")
  results = []
  for case in args.cases:
    r, err = _runner.run_child(__file__, ["--case", case, "--frames", str(args.frames),
                                          "--chunk", str(args.chunk), "--reps", str(args.reps),
                                          "--model", args.model])
    if r is None:
      results.append({"case": case, "failed": err.strip().splitlines()[-1:]})
      print(f"{case}: failed ({err})")
      continue
    results.append(r)
    print(f"{case}: {json.dumps(results[-1])}")
  print(format_table(results))
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump({"load_average": os.getloadavg(), "cpus": os.cpu_count(), "results": results}, f,
                indent=1)


if __name__ == "__main__":
  main()
