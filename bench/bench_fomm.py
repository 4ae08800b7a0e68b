"""FOMM (vox-256 model) animation speed and peak memory, JAX port and optionally official PyTorch.

    .venv/bin/python bench/bench_fomm.py [--batches 1 8] [--reps 3] [--torch-fomm-dir PATH]

Weights: the golden recipe (tests/golden/golden_weights.py on the vox256 fixture's spec), converted
by the real converter, so no download is needed; speed does not depend on the values. A "batch" is
the number of driving frames rendered by one `animate` call (one source, relative motion with
movement-scale adaptation): kp detection of source + reference + frames, then the generator on all
frames at once. frames/s excludes the jit compile (one warm-up call). Each case runs in its own
subprocess so peak memory (ru_maxrss of that process: host RAM, which is what the model uses on CPU;
plus the device's peak_bytes_in_use where the backend reports it) belongs to that case alone.

--torch-fomm-dir: a checkout of AliaksandrSiarohin/first-order-model; its KPDetector and
OcclusionAwareGenerator are built from the same model_params and loaded with the same state dict,
and timed on the same inputs (kp detection of source + frames, generator on the batch, no_grad,
eval mode). Nothing of that code lives here.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import _runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def golden_state_dict(golden_dir: str):
  os.environ["MAGPLUS_GOLDEN_DIR"] = golden_dir
  _, meta, sd = _runner.golden_fixture("fomm_vox256")
  return sd, meta


def inputs(batch: int, size: int = 256):
  rng = np.random.default_rng(0)
  img = lambda *s: rng.uniform(0, 1, s + (size, size, 3)).astype(np.float32)
  return img(1), img(1, batch), img(1)


def run_jax(batch: int, reps: int, golden_dir: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from magplus_jax.models.backbones import fomm  # pylint: disable=g-import-not-at-top
  from magplus_jax.ports import fomm as port  # pylint: disable=g-import-not-at-top
  sd, meta = golden_state_dict(golden_dir)
  config = fomm.model_config(meta["config"])
  model = fomm.from_state_dict(config, port.convert_state_dict(
      _runner.submodule(sd, "generator."), _runner.submodule(sd, "kp_detector."), config))
  animate, params = fomm.make_animate_fn(model, relative=True, adapt_movement_scale=True)
  source, driving, ref = (jax.device_put(a) for a in inputs(batch))
  t0 = time.perf_counter()
  jax.block_until_ready(animate(params, source, driving, ref))
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(animate(params, source, driving, ref))
    times.append(time.perf_counter() - t0)
  stats = jax.devices()[0].memory_stats() or {}
  return {"impl": "jax", "device": str(jax.devices()[0]), "batch": batch,
          "first_call_s": compile_s, "best_s": min(times),
          "frames_per_s": batch / min(times),
          "device_peak_bytes": stats.get("peak_bytes_in_use")}


def run_torch(batch: int, reps: int, golden_dir: str, fomm_dir: str) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, fomm_dir)
  from modules.generator import OcclusionAwareGenerator  # pylint: disable=g-import-not-at-top
  from modules.keypoint_detector import KPDetector  # pylint: disable=g-import-not-at-top
  sd, meta = golden_state_dict(golden_dir)
  cfg = meta["config"]
  kp_det = KPDetector(**cfg["kp_detector_params"], **cfg["common_params"]).eval()
  gen = OcclusionAwareGenerator(**cfg["generator_params"], **cfg["common_params"]).eval()
  split = lambda p: {k: torch.from_numpy(v) for k, v in _runner.submodule(sd, p).items()}
  kp_det.load_state_dict(split("kp_detector."))
  gen.load_state_dict(split("generator."))
  nchw = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, -3)))
  source, driving, ref = inputs(batch)
  source, driving, ref = nchw(source), nchw(driving[0]), nchw(ref)

  def step():
    with torch.no_grad():
      kp = kp_det(torch.cat([source, ref, driving]))
      kp_s = {k: v[:1].repeat(batch, *([1] * (v.dim() - 1))) for k, v in kp.items()}
      kp_d = {k: v[2:] for k, v in kp.items()}
      return gen(source.repeat(batch, 1, 1, 1), kp_driving=kp_d, kp_source=kp_s)["prediction"]

  t0 = time.perf_counter()
  step()
  first = time.perf_counter() - t0
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  return {"impl": "torch", "device": "cpu", "threads": torch.get_num_threads(), "batch": batch,
          "first_call_s": first, "best_s": min(times), "frames_per_s": batch / min(times)}


def child(args) -> None:
  if args.impl == "jax":
    out = run_jax(args.batch, args.reps, args.golden_dir)
  else:
    out = run_torch(args.batch, args.reps, args.golden_dir, args.torch_fomm_dir)
  out["peak_rss_mib"] = _runner.peak_rss_mib()
  _runner.emit(out)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--golden-dir", default=os.path.join(ROOT, "tests", "golden"))
  parser.add_argument("--torch-fomm-dir", default=None,
                      help="checkout of the official first-order-model code for a side-by-side")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--impl", default="jax", help=argparse.SUPPRESS)
  parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args)
    return
  impls = ["jax"] + (["torch"] if args.torch_fomm_dir else [])
  print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs")
  for impl in impls:
    for batch in args.batches:
      cmd = ["--impl", impl, "--batch", str(batch), "--reps", str(args.reps),
             "--golden-dir", args.golden_dir]
      if args.torch_fomm_dir:
        cmd += ["--torch-fomm-dir", args.torch_fomm_dir]
      r, err = _runner.run_child(__file__, cmd)
      if r is None:
        print(f"{impl} batch {batch}: failed ({err})")
        continue
      dev = f", device peak {r['device_peak_bytes'] / 2**20:.0f} MiB" if r.get(
          "device_peak_bytes") else ""
      print(f"{impl:5s} batch {batch:2d}: {r['frames_per_s']:7.2f} frames/s "
            f"(best {r['best_s']:.2f} s/call, first call {r['first_call_s']:.1f} s), "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB{dev}  [{r['device']}]")


if __name__ == "__main__":
  main()
