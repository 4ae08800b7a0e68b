"""Train-step throughput and memory: the real MagPlus step, and a U-Net-only step vs PyTorch.

  python bench/bench_train.py [--size 64,128,256] [--batch 8] [--steps 10] [--no-torch]
      [--out bench/results/train.json]

For each size: the full train step of configs/default.py at that resolution (magnifier + two
passes of the flow network + losses + Adam), examples/s after compilation, FLOPs per example from
XLA's cost analysis, peak memory (device stats where the backend has them, else the process's max
RSS, measured in a fresh subprocess per case), and on a GPU the fraction of the device's peak.
Unless --no-torch, where the `torch` extra is installed: the same U-Net (widths, norm, depth) with
an L1 pixel loss and Adam, in JAX and in PyTorch on the same machine, side by side in one run, and
their ratio; the last lines are `unet_<size> jax/torch: <ratio>`, one per size, for scripts.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import _runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Peak dense float32 FLOP/s per device, for utilisation figures.
PEAK_FLOPS = {"H100": 67e12, "H200": 67e12, "A100": 19.5e12}


def _peak_memory_bytes() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"])
  return int(_runner.peak_rss_mib() * 2**20)


def _config(size: int, batch: int):
  from magplus_jax import config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.data.image_size = size
  c.batch_size = batch
  if size >= 256:  # the 256x256 config: 4-level width-32 U-Net, 4 pyramid levels
    c.model.levels, c.model.width = 4, 32
  return c


def _fixed_batch(config):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from data_pipelines import procedural  # pylint: disable=g-import-not-at-top
  from magplus_jax import train  # pylint: disable=g-import-not-at-top
  spec = procedural.ProceduralSpec.from_config(train.data_config_for(config))
  ex = [procedural.generate_example(spec, "train", 0, i) for i in range(config.batch_size)]
  return {k: np.stack([e[k] for e in ex]) for k in ("ref", "frame", "magnified", "alpha")}


def bench_full_step(size: int, batch: int, steps: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from magplus_jax import sharding, train  # pylint: disable=g-import-not-at-top
  config = _config(size, batch)
  mesh = sharding.make_mesh(config.mesh)
  trainer = train.build_trainer(config, mesh)
  state = trainer.init()
  batch_arr = sharding.global_batch(_fixed_batch(config), mesh)
  fp = trainer.flow.params
  t0 = time.perf_counter()
  compiled = trainer.train_step.lower(state, batch_arr, fp).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, list) else cost
  state, m = compiled(state, batch_arr, fp)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = compiled(state, batch_arr, fp)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t0) / steps
  flops = float(cost.get("flops", 0.0))
  out = {"case": f"full_step_{size}", "size": size, "batch": batch, "step_s": dt,
         "examples_per_s": batch / dt, "flops_per_example": flops / batch, "compile_s": compile_s,
         "peak_memory_bytes": _peak_memory_bytes(), "device": jax.devices()[0].device_kind}
  peak = next((v for k, v in PEAK_FLOPS.items() if k in out["device"]), None)
  if peak:
    out["mfu"] = flops / dt / peak
  return out


def bench_unet_jax(size: int, batch: int, steps: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from magplus_jax.models import magnifier  # pylint: disable=g-import-not-at-top
  config = _config(size, batch)
  # The plain U-Net, as the PyTorch side builds it: [ref, frame, enc(alpha)] (38 channels) -> RGB,
  # without the lagrangian output's motion estimate and resampling.
  config.model.output = "residual"
  graphdef, params, rest = nnx.split(magnifier.create(config.model), nnx.Param, ...)
  tx = optax.adam(3e-4)
  opt = tx.init(params)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((batch, size, size, 3), np.float32))
  a = jnp.full((batch,), 4.0)

  def step(params, opt):
    def loss(p):
      return jnp.mean(jnp.abs(nnx.merge(graphdef, p, rest)(x, x, a, train=True) - x))
    l, g = jax.value_and_grad(loss)(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), opt, l
  t0 = time.perf_counter()
  step = jax.jit(step).lower(params, opt).compile()
  compile_s = time.perf_counter() - t0
  cost = step.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, list) else cost
  params, opt, l = step(params, opt)
  jax.block_until_ready(l)
  t0 = time.perf_counter()
  for _ in range(steps):
    params, opt, l = step(params, opt)
  jax.block_until_ready(l)
  dt = (time.perf_counter() - t0) / steps
  return {"case": f"unet_jax_{size}", "size": size, "batch": batch, "step_s": dt,
          "examples_per_s": batch / dt, "compile_s": compile_s,
          "flops_per_example": float(cost.get("flops", 0.0)) / batch,
          "peak_memory_bytes": _peak_memory_bytes(), "device": jax.devices()[0].device_kind}


def bench_unet_torch(size: int, batch: int, steps: int) -> dict:
  """The same U-Net in PyTorch (GroupNorm, SiLU, avg-pool down, nearest-up + conv, skip concat)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  config = _config(size, batch)
  levels, width = config.model.levels, config.model.width
  widths = [min(width * 2 ** i, 512) for i in range(levels)]

  def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(min(8, cout), cout),
                         nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1),
                         nn.GroupNorm(min(8, cout), cout), nn.SiLU())

  class UNet(nn.Module):
    def __init__(self):
      super().__init__()
      cin = 6 + 32
      self.down = nn.ModuleList()
      for w in widths:
        self.down.append(block(cin, w))
        cin = w
      self.up_conv = nn.ModuleList(nn.Conv2d(widths[i + 1], widths[i], 3, padding=1)
                                   for i in range(levels - 2, -1, -1))
      self.up_block = nn.ModuleList(block(2 * widths[i], widths[i])
                                    for i in range(levels - 2, -1, -1))
      self.head = nn.Conv2d(widths[0], 3, 1)

    def forward(self, x):
      skips = []
      for i, b in enumerate(self.down):
        if i:
          x = nn.functional.avg_pool2d(x, 2)
        x = b(x)
        skips.append(x)
      for j, (c, b) in enumerate(zip(self.up_conv, self.up_block)):
        x = c(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
        x = b(torch.cat([x, skips[-2 - j]], 1))
      return self.head(x)

  torch.manual_seed(0)
  net = UNet()
  opt = torch.optim.Adam(net.parameters(), 3e-4)
  x = torch.rand(batch, 38, size, size)
  target = torch.rand(batch, 3, size, size)

  def step():
    opt.zero_grad()
    loss = (net(x) - target).abs().mean()
    loss.backward()
    opt.step()
    return loss
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top
  with FlopCounterMode(display=False) as counter:  # forward + backward, as XLA counts the step
    step()
  t0 = time.perf_counter()
  for _ in range(steps):
    step()
  dt = (time.perf_counter() - t0) / steps
  return {"case": f"unet_torch_{size}", "size": size, "batch": batch, "step_s": dt,
          "examples_per_s": batch / dt, "torch_threads": torch.get_num_threads(),
          "flops_per_example": float(counter.get_total_flops()) / batch,
          "torch": torch.__version__,
          "peak_memory_bytes": int(_runner.peak_rss_mib() * 2**20)}


CASES = {"full": bench_full_step, "unet_jax": bench_unet_jax, "unet_torch": bench_unet_torch}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", "--size", default="64,256", help="comma-separated image sizes")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--no-torch", action="store_true",
                 help="skip the U-Net-only JAX vs PyTorch pair (run when torch is installed)")
  p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "train.json"),
                 help="JSON results ('' = none)")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:  # one case in a fresh process, so its peak memory is its own
    name, size = args.child.split(":")
    _runner.emit(CASES[name](int(size), args.batch, args.steps))
    return
  print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs, batch {args.batch}, "
        f"{args.steps} timed steps")
  sizes = [int(s) for s in args.sizes.split(",")]
  with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
  names = ["full"] + (["unet_jax", "unet_torch"] if with_torch else [])
  rows = []
  for size in sizes:
    for name in names:
      r, err = _runner.run_child(__file__, ["--batch", str(args.batch), "--steps", str(args.steps)],
                                 child_flag=["--child", f"{name}:{size}"])
      if r is None:
        print(f"{name} {size}: failed ({err})", file=sys.stderr)
        continue
      rows.append(r)
  by_case = {r["case"]: r for r in rows}
  for size in sizes:
    j, t = by_case.get(f"unet_jax_{size}"), by_case.get(f"unet_torch_{size}")
    if j and t:
      rows.append({"case": f"ratio_unet_{size}", "size": size, "jax_over_torch_examples_per_s":
                   j["examples_per_s"] / t["examples_per_s"],
                   "jax_over_torch_flops": j["flops_per_example"] / max(t["flops_per_example"], 1)})
  print(f"{'case':<20} {'ex/s':>9} {'step ms':>9} {'GFLOP/ex':>9} {'peak MiB':>9}")
  for r in rows:
    if "examples_per_s" in r:
      print(f"{r['case']:<20} {r['examples_per_s']:9.2f} {1e3 * r['step_s']:9.1f} "
            f"{r.get('flops_per_example', 0) / 1e9:9.3f} {r['peak_memory_bytes'] / 2**20:9.0f}")
    else:
      print(f"{r['case']:<20} jax/torch examples/s = {r['jax_over_torch_examples_per_s']:.2f} "
            f"(FLOP count ratio {r['jax_over_torch_flops']:.2f})")
  for r in rows:  # one machine-readable line per size, last
    if r["case"].startswith("ratio_unet_"):
      print(f"unet_{r['size']} jax/torch: {r['jax_over_torch_examples_per_s']:.2f}")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump({"load_average": os.getloadavg(), "cpus": os.cpu_count(), "steps": args.steps,
                 "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
