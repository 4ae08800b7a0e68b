"""Optical-flow speed: RAFT (full, small) and the weight-free pyramid_lk, on this machine's CPU/GPU.

    .venv/bin/python bench/bench_flow.py [--sizes 256 512] [--iters 12] [--reps 3]
        [--out bench_flow.json] [--torch-raft-dir PATH]

frames/s = image pairs per second at batch 1, best of --reps calls after one warm-up call (the jit
compile is excluded and reported separately as first_call_s). RAFT weights follow the golden recipe
(tests/golden/golden_weights.py on the raft_{full,small} fixture specs) through the real converter,
so no download is needed; speed does not depend on the values. Inputs are smooth random frames.

--torch-raft-dir: a checkout of princeton-vl/RAFT; its `core/raft.py` model is built with the same
args, loaded with the same state dict and timed on the same frames (eval, no_grad, test_mode=True,
0..255 input as its demo feeds). torch uses its default thread count. Nothing of that code lives here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

VARIANTS = {"raft": ("raft_full", False), "raft_small": ("raft_small", True)}


def frames(size: int, seed: int = 0):
  """Two [1, size, size, 3] frames in [0, 1]: a smooth pattern and a 2-px shifted copy."""
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.arange(size + 4), np.arange(size + 4), indexing="ij")
  img = np.zeros((size + 4, size + 4, 3))
  for _ in range(8):
    f, p = rng.uniform(0.02, 0.15, 2), rng.uniform(0, 2 * np.pi, 3)
    img += np.cos(f[0] * xx[..., None] + f[1] * yy[..., None] + p)
  img = (0.5 + 0.5 * np.tanh(img / 3)).astype(np.float32)
  return img[None, 2:2 + size, 2:2 + size], img[None, 2:2 + size, :size]


def golden_state_dict(variant: str):
  from golden_utils import load_fixture  # pylint: disable=g-import-not-at-top
  return load_fixture(VARIANTS[variant][0])[2]


def _time(call, reps: int) -> dict:
  """first_call_s (compile + run), best_s (wall) and cpu_s (process CPU seconds of that call; on a
  shared machine wall time mostly measures the neighbours, CPU time less so)."""
  t0 = time.perf_counter()
  call()
  out = {"first_call_s": time.perf_counter() - t0, "best_s": float("inf")}
  for _ in range(reps):
    t0, c0 = time.perf_counter(), time.process_time()
    call()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if wall < out["best_s"]:
      out.update(best_s=wall, cpu_s=cpu)
  out["frames_per_s"] = 1.0 / out["best_s"]
  return out


def run_jax(name: str, size: int, iters: int, reps: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  if name == "pyramid_lk":
    import ml_collections  # pylint: disable=g-import-not-at-top
    from magplus_jax.models.flow import get_flow  # pylint: disable=g-import-not-at-top
    est = get_flow(ml_collections.ConfigDict({"name": "pyramid_lk"}))
    flow_fn, params = jax.jit(est.flow_fn), est.params
  else:
    from magplus_jax.models.flow import raft  # pylint: disable=g-import-not-at-top
    from magplus_jax.ports import raft as port  # pylint: disable=g-import-not-at-top
    small = VARIANTS[name][1]
    model = raft.model_from_params(port.convert_state_dict(golden_state_dict(name), small), small)
    graphdef, params = nnx.split(model)
    flow_fn = jax.jit(raft.make_flow_fn(graphdef, iters))
  im1, im2 = (jax.device_put(a) for a in frames(size))
  timing = _time(lambda: jax.block_until_ready(flow_fn(params, im1, im2)), reps)
  return {"impl": "jax", "estimator": name, "size": size, "iters": iters if name != "pyramid_lk"
          else None, "device": str(jax.devices()[0]), **timing}


def run_torch(name: str, size: int, iters: int, reps: int, raft_dir: str) -> dict:
  import argparse as ap  # pylint: disable=g-import-not-at-top,reimported
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(raft_dir, "core"))
  from raft import RAFT  # pylint: disable=g-import-not-at-top
  small = VARIANTS[name][1]
  args = ap.Namespace(small=small, mixed_precision=False, alternate_corr=False, dropout=0)
  model = RAFT(args)
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                         golden_state_dict(name).items()})
  model.eval()
  im1, im2 = (torch.from_numpy(255.0 * a).permute(0, 3, 1, 2).contiguous() for a in frames(size))

  def call():
    with torch.no_grad():
      model(im1, im2, iters=iters, test_mode=True)
  return {"impl": "torch", "estimator": name, "size": size, "iters": iters, "device": "cpu",
          "torch_threads": torch.get_num_threads(), **_time(call, reps)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
  parser.add_argument("--iters", type=int, default=12)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--estimators", nargs="+", default=["raft", "raft_small", "pyramid_lk"])
  parser.add_argument("--torch-raft-dir", default=None)
  parser.add_argument("--out", default=None, help="write the results as JSON here")
  args = parser.parse_args(argv)

  rows = []
  for name in args.estimators:
    for size in args.sizes:
      try:
        rows.append(run_jax(name, size, args.iters, args.reps))
      except ImportError as e:  # pyramid_lk lives in another module that may be absent
        print(f"skipping {name}: {e}")
        break
      print(json.dumps(rows[-1]), flush=True)
      if args.torch_raft_dir and name in VARIANTS:
        rows.append(run_torch(name, size, args.iters, args.reps, args.torch_raft_dir))
        print(json.dumps(rows[-1]), flush=True)

  print(f"\n{'estimator':<12}{'impl':<7}{'size':>6}{'iters':>7}{'frames/s':>10}{'best s':>9}"
        f"{'cpu s':>9}{'first s':>9}")
  for r in rows:
    print(f"{r['estimator']:<12}{r['impl']:<7}{r['size']:>6}{str(r['iters'] or '-'):>7}"
          f"{r['frames_per_s']:>10.3f}{r['best_s']:>9.3f}{r['cpu_s']:>9.3f}"
          f"{r['first_call_s']:>9.2f}")
  print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end)")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"rows": rows, "cpu_count": os.cpu_count(), "loadavg": os.getloadavg()}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
