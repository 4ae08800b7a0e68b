"""EMOPortraits (stage 1, 512 px, released config): source-pass and per-frame time, peak memory.

    .venv/bin/python bench/bench_emoportraits.py [--dtypes float32 bfloat16] [--chunk 1]
        [--frames 2] [--reps 1] [--weights golden|random] [--out bench/results/emoportraits.json]

Weights: by default the golden fixture's (tests/golden/emoportraits_512.npz, rebuilt with its
golden_weights.py and converted by the real converter), so the frames are the fixture's non-trivial
textures and the bfloat16 error is meaningful; `--weights random` draws He-scaled ones instead
(speed does not depend on the values). The parent converts once and writes orbax checkpoints; each
dtype then runs in its own subprocess that loads them through the backbone's own `build` (mask
"none": BiSeNet is not timed), so its peak RSS (ru_maxrss: host RAM, where CPU XLA keeps weights
and activations) is that of a real run alone. The timed functions are the backbone's jitted
`prepare` (the source pass, once per clip) and `drive` (one chunk of driving frames, one 512 px
frame at a time by default), as `animate` streams them. first_call includes the XLA compile; the
steady-state number is the best of the further calls. "bfloat16" is the backbone's dtype option:
the local encoder, the volume networks and the decoder compute in bfloat16; the embedders, the
warp generators, the head-pose net, GroupNorm statistics and all sampling coordinates stay float32.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import _runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _rss_gb() -> float:
  return _runner.peak_rss_mib() * 1024 / 1e6


def random_params(cfg) -> dict:
  """He-scaled float32 weights shaped like the converted checkpoints (no float64 copies)."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from magplus_jax.models.backbones import emoportraits as E  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = str(path[-1].key)
    shape = leaf.shape
    if name == "kernel":
      # The head-pose head near identity (as the golden recipe): a random pose would move the
      # whole volume out of the sampling grid and the frames would be constant.
      scale = 0.005 if shape == (512, 9) else 1.0
      return (rng.standard_normal(shape, dtype=np.float32)
              * np.float32(scale * np.sqrt(2.0 / np.prod(shape[:-1]))))
    if name == "bias" and shape == (9,):
      return np.array([1, 1, 1, 0, 0, 0, 0, 0, 0], np.float32)
    if name in ("scale", "var"):
      # As the golden recipe: the norms before the scale-free warp / image heads set their
      # output scale; 1.0 would saturate the sigmoid and the tanh.
      keys = [str(getattr(p, "key", "")) for p in path]
      small = ("head_norm" in keys and "decoder" in keys) or "pre_head_norm" in keys
      return np.full(shape, 0.15 if small else 1.0, np.float32)
    if name == "input_tensor":
      return rng.standard_normal(shape, dtype=np.float32)
    if name.startswith("proj_"):
      return 0.01 * rng.standard_normal(shape, dtype=np.float32)
    return np.zeros(shape, np.float32)

  mods = E.abstract_modules(cfg)
  out = {}
  for part in ("model", "headpose"):
    shapes = nnx.to_pure_dict(nnx.state(mods[part]))
    out[part] = jax.tree_util.tree_map_with_path(draw, shapes)
  out["bisenet"] = None
  return out


def write_checkpoints(out_dir: str, weights: str) -> tuple[str, str]:
  """Converted (golden) or random weights -> orbax dirs (stage 1, head pose)."""
  from magplus_jax.checkpointing import save_pretrained  # pylint: disable=g-import-not-at-top
  from magplus_jax.models.backbones import emoportraits as E  # pylint: disable=g-import-not-at-top
  cfg = E.EMOPortraitsConfig()
  if weights == "golden":
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from golden_utils import load_fixture  # pylint: disable=g-import-not-at-top
    from magplus_jax.ports import emoportraits as P  # pylint: disable=g-import-not-at-top
    _, _, sd = load_fixture("emoportraits_512")
    params = dict(
        model=P.convert_state_dict({k: v for k, v in sd.items()
                                    if not k.startswith("head_pose_regressor.")}, cfg),
        headpose=P.convert_headpose_state_dict({k[len("head_pose_regressor.net."):]: v
                                                for k, v in sd.items()
                                                if k.startswith("head_pose_regressor.")}))
    del sd
  else:
    params = random_params(cfg)
  arch = {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
  stage1 = save_pretrained(os.path.join(out_dir, "stage1"), params["model"], model="emoportraits",
                           config={"architecture": arch})
  headpose = save_pretrained(os.path.join(out_dir, "headpose"), params["headpose"],
                             model="emoportraits_headpose")
  return stage1, headpose


def child(dtype: str, chunk: int, frames: int, reps: int, out_dir: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from magplus_jax.models.backbones import emoportraits as E  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  bb = E.build(ml_collections.ConfigDict(dict(
      name="emoportraits", checkpoint=os.path.join(out_dir, "stage1"),
      headpose_checkpoint=os.path.join(out_dir, "headpose"), mask="none", chunk_size=chunk,
      dtype=dtype, pose_mode="absolute", expression_mode="absolute")))
  jax.block_until_ready(bb.params)
  load_s = time.perf_counter() - t0
  rss_weights = _rss_gb()
  prep, drv, params = bb.prepare, bb.drive, bb.params
  golden = os.path.join(ROOT, "tests", "golden", "emoportraits_512.npz")
  if os.path.isfile(golden):   # the fixture's source, mask and driving frames
    with np.load(golden) as z:
      nhwc = lambda a: jnp.asarray(np.transpose(a, (0, 2, 3, 1)))
      source = nhwc(z["source"] * (z["source_mask"] > 0.6))
      driving = jnp.asarray(np.transpose(z["driving"][:, 0], (0, 2, 3, 1)))[None]
      prediction = np.transpose(z["prediction"][:, 0], (0, 2, 3, 1))[None]
    driving = jnp.concatenate([driving] * (-(-chunk // driving.shape[1])), axis=1)[:, :chunk]
    ref = driving[:, 0]
  else:
    rng = np.random.default_rng(1)
    img = lambda *s: jnp.asarray(rng.uniform(0, 1, s + (512, 512, 3)).astype(np.float32))
    source, ref, driving = img(1), img(1), img(1, chunk)
    prediction = None

  def timed(fn, *args):
    t0, c0 = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn(*args))
    return out, (time.perf_counter() - t0, time.process_time() - c0)

  state, src_first = timed(prep, params, source, ref)
  src_times = [timed(prep, params, source, ref)[1] for _ in range(reps)]
  rss_source = _rss_gb()
  out, drv_first = timed(drv, params, state, driving)
  drv_times = [timed(drv, params, state, driving)[1] for _ in range(max(reps, frames // chunk))]
  out = np.asarray(out, np.float32)
  assert np.isfinite(out).all()
  np.save(os.path.join(out_dir, f"frame_{dtype}.npy"), out)
  vs_golden = {}
  if prediction is not None:   # with the golden weights the frames are the fixture's prediction
    n = min(out.shape[1], prediction.shape[1])
    vs_golden = {"max_abs_diff_vs_golden_prediction":
                 float(np.abs(out[:, :n] - prediction[:, :n]).max())}
  best = lambda ts: min(ts, key=lambda t: t[0])
  return {"dtype": dtype, "chunk": chunk, "device": str(jax.devices()[0]), "load_s": load_s,
          "source_first_call_s": src_first[0], "source_s": best(src_times)[0],
          "source_cpu_s": best(src_times)[1],
          "drive_first_call_s": drv_first[0], "drive_chunk_s": best(drv_times)[0],
          "per_frame_s": best(drv_times)[0] / chunk, "per_frame_cpu_s": best(drv_times)[1] / chunk,
          "unsaturated_fraction": float(np.mean((out > 0.01) & (out < 0.99))),
          "frame_std": float(out.std()),
          "rss_after_weights_gb": rss_weights, "rss_after_source_gb": rss_source,
          "peak_rss_gb": _rss_gb(), "cpu_count": os.cpu_count(),
          "load_avg": os.getloadavg(), **vs_golden}


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
  ap.add_argument("--chunk", type=int, default=1, help="driving frames per drive call")
  ap.add_argument("--frames", type=int, default=2, help="frames timed after the first call")
  ap.add_argument("--reps", type=int, default=1)
  ap.add_argument("--weights", choices=("golden", "random"), default=None,
                  help="default: golden when tests/golden/emoportraits_512.npz exists")
  ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "emoportraits.json"))
  ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
  ap.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
  a = ap.parse_args(argv)
  if a.child:
    _runner.emit(child(a.child, a.chunk, a.frames, a.reps, a.tmp))
    return
  results = []
  tmp = tempfile.mkdtemp(prefix="bench_emoportraits_")
  weights = a.weights or ("golden" if os.path.isfile(
      os.path.join(ROOT, "tests", "golden", "emoportraits_512.npz")) else "random")
  write_checkpoints(tmp, weights)
  for dtype in a.dtypes:
    res, err = _runner.run_child(__file__, ["--chunk", str(a.chunk), "--frames", str(a.frames),
                                            "--reps", str(a.reps), "--tmp", tmp],
                                 child_flag=["--child", dtype])
    if res is None:
      print(f"{dtype}: failed ({err})", file=sys.stderr)
      continue
    results.append(res)
  print("wall seconds (CPU seconds of the process in brackets; on a shared machine the CPU time is "
        "the steadier number)")
  print(f"{'dtype':9s} {'chunk':>5s} {'source 1st':>10s} {'source':>16s} {'frame 1st':>10s} "
        f"{'per frame':>16s} {'peak RSS':>9s}")
  for r in results:
    print(f"{r['dtype']:9s} {r['chunk']:5d} {r['source_first_call_s']:9.1f}s "
          f"{r['source_s']:7.1f}s [{r['source_cpu_s']:6.1f}] {r['drive_first_call_s']:9.1f}s "
          f"{r['per_frame_s']:7.1f}s [{r['per_frame_cpu_s']:6.1f}] {r['peak_rss_gb']:8.2f}G")
  frames = {d: os.path.join(tmp, f"frame_{d}.npy") for d in a.dtypes}
  if "float32" in frames and all(os.path.isfile(f) for f in frames.values()):
    ref = np.load(frames["float32"])
    for r in results:
      r["max_abs_diff_vs_float32"] = float(np.abs(np.load(frames[r["dtype"]]) - ref).max())
      print(f"{r['dtype']}: max |frame - float32 frame| = {r['max_abs_diff_vs_float32']:.3g}")
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump({"benchmark": "emoportraits_512", "weights": weights, "results": results}, f,
              indent=1)
  print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
