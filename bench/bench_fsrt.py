"""FSRT (vox256 model) animation speed and peak memory, JAX port and optionally official PyTorch.

    .venv/bin/python bench/bench_fsrt.py [--batches 1 8] [--reps 1] [--chunk 4096]
                                         [--torch-fsrt-dir PATH]

Weights: the golden recipe (tests/golden/golden_weights.py on the fsrt_vox256 fixture's spec)
through the real converter. A "batch" is the number of 256x256 driving frames rendered by one
`animate` call (one source, the demo's absolute keypoints): kp + expression of source and frames,
the encoder once, then every pixel of every frame decoded in chunks of --chunk pixels. The decoder
dominates: ~2 TFLOP per 256x256 frame, so on a CPU expect minutes per frame. frames/s excludes the
jit compile (one warm-up call). Each case runs in its own subprocess; peak memory is that process's
ru_maxrss (host RAM) plus the device's peak_bytes_in_use where the backend reports it.

--torch-fsrt-dir: a checkout of andrerochow/fsrt (needs einops); its modules are built from the
same config, loaded with the same state dicts and timed on the same work (no_grad, eval, the
same chunk). Nothing of that code lives here.
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
PARTS = ("encoder", "decoder", "expression_encoder")


def golden_state_dict(golden_dir: str):
  os.environ["MAGPLUS_GOLDEN_DIR"] = golden_dir
  _, meta, sd = _runner.golden_fixture("fsrt_vox256")
  return {p: _runner.submodule(sd, p + ".") for p in PARTS + ("kp_detector",)}, meta


def inputs(batch: int, size: int = 256):
  rng = np.random.default_rng(0)
  img = lambda *s: rng.uniform(0, 1, s + (size, size, 3)).astype(np.float32)
  return img(1), img(1, batch)


def run_jax(batch: int, reps: int, chunk: int, golden_dir: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from magplus_jax.models.backbones import fsrt  # pylint: disable=g-import-not-at-top
  from magplus_jax.ports import fsrt as port  # pylint: disable=g-import-not-at-top
  sd, _ = golden_state_dict(golden_dir)
  model = fsrt.from_state_dict(fsrt.VOX256_CONFIG, port.convert_state_dict(
      {p: sd[p] for p in PARTS}, sd["kp_detector"]))
  animate, params = fsrt.make_animate_fn(model, chunk=chunk)
  source, driving = (jax.device_put(a) for a in inputs(batch))
  t0 = time.perf_counter()
  jax.block_until_ready(animate(params, source, driving, source))
  first = time.perf_counter() - t0
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(animate(params, source, driving, source))
    times.append(time.perf_counter() - t0)
  stats = jax.devices()[0].memory_stats() or {}
  return {"impl": "jax", "device": str(jax.devices()[0]), "batch": batch, "first_call_s": first,
          "best_s": min(times), "frames_per_s": batch / min(times),
          "device_peak_bytes": stats.get("peak_bytes_in_use")}


def run_torch(batch: int, reps: int, chunk: int, golden_dir: str, fsrt_dir: str) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, fsrt_dir)
  from modules.expression_encoder import ExpressionEncoder  # pylint: disable=g-import-not-at-top
  from modules.keypoint_detector import KPDetector  # pylint: disable=g-import-not-at-top
  from srt.model import FSRT  # pylint: disable=g-import-not-at-top
  sd, meta = golden_state_dict(golden_dir)
  cfg = meta["config"]["model"]
  kp_det = KPDetector().eval()
  expr = ExpressionEncoder(expression_size=cfg["expression_size"],
                           in_channels=kp_det.predictor.out_filters)
  model = FSRT(cfg, expression_encoder=expr).eval()
  t = lambda d: {k: torch.from_numpy(v) for k, v in d.items()}
  kp_det.load_state_dict(t(sd["kp_detector"]))
  for p in PARTS:
    getattr(model, p).load_state_dict(t(sd[p]))
  source, driving = inputs(batch)
  nchw = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, -3)))
  source, driving = nchw(source), nchw(driving[0])
  h = w = source.shape[-1]
  ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                          torch.arange(w, dtype=torch.float32), indexing="ij")
  pix = torch.stack([(xs + 0.5 - w / 2) / (w / 2), (ys + 0.5 - h / 2) / (h / 2)], -1)

  def step():
    with torch.no_grad():
      kps, lat = kp_det(torch.cat([source, driving]))
      e = model.expression_encoder(lat["feature_map"], lat["heatmap"][:, :, 0])
      z = model.encoder(source[None], kps[:1][None], pix[None, None], expression_vector=e[:1][None])
      flat = pix.reshape(1, -1, 2)
      for f in range(batch):
        kp_f = kps[1 + f][None, None].expand(1, chunk, -1, -1)
        for i in range(0, flat.shape[1], chunk):
          model.decoder(z, flat[:, i:i + chunk], kp_f, expression_vector=e[1 + f][None])

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
    out = run_jax(args.batch, args.reps, args.chunk, args.golden_dir)
  else:
    out = run_torch(args.batch, args.reps, args.chunk, args.golden_dir, args.torch_fsrt_dir)
  out["peak_rss_mib"] = _runner.peak_rss_mib()
  _runner.emit(out)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
  parser.add_argument("--reps", type=int, default=1)
  parser.add_argument("--chunk", type=int, default=4096, help="pixels decoded at once")
  parser.add_argument("--golden-dir", default=os.path.join(ROOT, "tests", "golden"))
  parser.add_argument("--torch-fsrt-dir", default=None,
                      help="checkout of the official fsrt code for a side-by-side")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--impl", default="jax", help=argparse.SUPPRESS)
  parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args)
    return
  impls = ["jax"] + (["torch"] if args.torch_fsrt_dir else [])
  print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs, decoder chunk {args.chunk}")
  for impl in impls:
    for batch in args.batches:
      cmd = ["--impl", impl, "--batch", str(batch), "--reps", str(args.reps),
             "--chunk", str(args.chunk), "--golden-dir", args.golden_dir]
      if args.torch_fsrt_dir:
        cmd += ["--torch-fsrt-dir", args.torch_fsrt_dir]
      r, err = _runner.run_child(__file__, cmd)
      if r is None:
        print(f"{impl} batch {batch}: failed ({err})")
        continue
      dev = f", device peak {r['device_peak_bytes'] / 2**20:.0f} MiB" if r.get(
          "device_peak_bytes") else ""
      print(f"{impl:5s} batch {batch:2d}: {r['frames_per_s']:8.4f} frames/s "
            f"(best {r['best_s']:.1f} s/call, first call {r['first_call_s']:.1f} s), "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB{dev}  [{r['device']}]")


if __name__ == "__main__":
  main()
