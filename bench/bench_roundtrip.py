"""The round trip DeMagPlus(MagPlus(x, alpha), 1/alpha) on held-out procedural pairs, measured by
two estimators: the project's weight-free pyramid Lucas-Kanade (what `evaluate` reports) and
scikit-image's TV-L1, which nothing here was trained with.

    .venv/bin/python bench/bench_roundtrip.py [--demag W/demag] [--sizes 64 128] [--pairs 16]
        [--out bench/results/roundtrip.json]

Why two: Lucas-Kanade reads an image resampled along an estimated (not exact) motion field as
moving more than it does (measured: the shipped DeMagPlus's output, warped by f / alpha, reads as
1.5-2.5x f / alpha), while it reads a frame warped by the exact motion at 0.95x. So the same
round trip is scored by an estimator of another family. Per alpha and estimator F:
  * ratio: evaluate's number, the mean over moving pixels (|F(I0, I1)| > 0.05 px) of
    |F(I0, back)| / |F(I0, I1)|;
  * agg: sum |F(I0, back)| / sum |F(I0, I1)| over the same pixels (robust to the small motions);
  * proj: sum F(I0, back) . F(I0, I1) / sum |F(I0, I1)|^2, the least-squares gain along the
    input's motion (the number bench_real_footage.py reports);
  * floor: the same three for I0 bilinearly warped by the exact motion, what a perfect round trip
    through this project's resampler scores.
MagPlus is the shipped network; DeMagPlus is --demag (a training workdir) or the shipped one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))


def gains(f_out: np.ndarray, f_in: np.ndarray, moving_px: float) -> dict:
  """ratio / agg / proj (module doc) of flows [N, H, W, 2]."""
  m_in, m_out = np.linalg.norm(f_in, axis=-1), np.linalg.norm(f_out, axis=-1)
  mv = m_in > moving_px
  return {"ratio": float((m_out[mv] / m_in[mv]).mean()),
          "agg": float(m_out[mv].sum() / m_in[mv].sum()),
          "proj": float((f_out * f_in).sum(-1)[mv].sum() / (m_in[mv] ** 2).sum())}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--demag", default="", help="a DeMagPlus training workdir (default: shipped)")
  p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
  p.add_argument("--alphas", type=float, nargs="+", default=[4.0, 8.0, 16.0, 32.0])
  p.add_argument("--pairs", type=int, default=16)
  p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "roundtrip.json"))
  args = p.parse_args(argv)

  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from bench_real_footage import tvl1  # pylint: disable=g-import-not-at-top
  from magplus_jax import config_lib, pretrained  # pylint: disable=g-import-not-at-top
  from magplus_jax.evaluation import heldout, metrics  # pylint: disable=g-import-not-at-top
  from magplus_jax.models import lagrangian, magnifier, resample  # pylint: disable=g-import-not-at-top
  from magplus_jax.models.flow import get_flow  # pylint: disable=g-import-not-at-top

  results = {}
  for size in args.sizes:
    config = config_lib.base_config()
    config.data.image_size = size
    lk = get_flow(config.flow)
    mag = magnifier.build(pretrained.magnifier_config("magplus"))
    demag_cfg = pretrained.magnifier_config("demag")  # the recipe's architecture and range
    if args.demag:
      demag_cfg.checkpoint = args.demag
    demag = magnifier.build(demag_cfg)
    grid = resample.pixel_grid(size, size, jnp.float32)[None]
    for alpha in args.alphas:
      pairs = heldout.heldout_pairs(config, alpha, args.pairs)
      ref, frame = jnp.asarray(pairs["ref"]), jnp.asarray(pairs["frame"])
      a = jnp.full((ref.shape[0],), alpha, jnp.float32)
      back = demag.magnify_clip(demag.params,
                                mag.magnify_clip(mag.params, jnp.stack([ref, frame], 1), a),
                                1.0 / a)[:, 1]
      floor = lagrangian.sample_at(ref, grid - jnp.asarray(pairs["flow"]))
      row = {}
      for name, flow_fn in (("lk", lambda x, y: np.asarray(lk(x, y))),
                            ("tvl1", lambda x, y: np.stack([tvl1(u, v) for u, v in zip(
                                np.asarray(x), np.asarray(y))]))):
        f_in = flow_fn(ref, frame)
        row[name] = {"roundtrip": gains(flow_fn(ref, back), f_in, metrics.MOVING_PX),
                     "floor": gains(flow_fn(ref, floor), f_in, metrics.MOVING_PX)}
      results.setdefault(f"{size}px", {})[str(alpha)] = row
      print(f"{size} px alpha {alpha:g}: " + "; ".join(
          f"{k} round trip ratio {v['roundtrip']['ratio']:.3f} agg {v['roundtrip']['agg']:.3f} "
          f"proj {v['roundtrip']['proj']:.3f} (floor agg {v['floor']['agg']:.3f})"
          for k, v in row.items()), flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"demag": args.demag or "shipped", "pairs": args.pairs, "results": results}, f,
              indent=2)
  print("wrote", args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
