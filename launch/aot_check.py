"""Will this config's train step fit and compile on a TPU pod? Checked here, on a CPU machine.

  python launch/aot_check.py      # configs/flowmag.py (512x512, RAFT loss) on v5e:4x4 and v5p:4x4x8
  python launch/aot_check.py --config configs/flowmag.py --topology v5e:4x4 --topology v5p:4x4x8 \
      [--num_slices 2] [--mesh data:-1,fsdp:4] [--fsdp] [--per_device_batch 2] [--out aot.json] \
      [--config.model.width=32 ...]

The global batch is config.batch_size, rounded up to a multiple of the batch shards (data x fsdp
chips) when the slice cannot split it evenly, or --per_device_batch x the shards.

With the `libtpu` package installed (`pip install -e ".[tpu]"`), jax.experimental.topologies
describes a pod's chips without any TPU attached. On those devices we build the config's mesh, the
real Trainer (magplus_jax.train.build_trainer: model, optimizer, sharding rules, donation) and lower
and compile its jitted train step for abstract inputs: ShapeDtypeStructs with NamedShardings for the
state, the batch and the flow network's parameters. Nothing is initialised and no weights are read,
so a RAFT loss compiles without a checkpoint. Reported per topology, per chip: XLA's memory
analysis (arguments, outputs, temporaries, peak) against the chip's HBM, its cost analysis (flops,
bytes accessed) and the collectives in the optimized HLO.

Caveats of the numbers: XLA's cost analysis counts the body of a while loop (RAFT's refinement
`lax.scan`) once, not once per iteration, so RAFT flops are a lower bound; its "bytes accessed"
for the FlowMag step (2.5 TB per chip per step) is far above plausible memory traffic, probably
because gathers (RAFT's correlation lookup, grid sampling) count their whole operand (unverified); collectives are counted per HLO instruction (a collective inside a loop body
counts once). Where XLA cannot print the optimized HLO (seen for v5p with libtpu 0.0.52), the
collectives are reported as unknown and memory and flops still are. The compiled executable cannot
run here. Compile times are for this machine's CPU, not a TPU host.

Environment: JAX_PLATFORMS=cpu, TPU_WORKER_HOSTNAMES=localhost and TPU_ACCELERATOR_TYPE are set
(unless already set) before jax initialises libtpu; they silence libtpu's probing for a real TPU.
ALLOW_MULTIPLE_LIBTPU_LOAD=1 lets it run while another process holds /tmp/libtpu_lockfile (any jax
program started without JAX_PLATFORMS=cpu on a machine with libtpu takes that lock).
"""
from __future__ import annotations

import os
import sys

for _k, _v in (("JAX_PLATFORMS", "cpu"), ("TPU_WORKER_HOSTNAMES", "localhost"),
               ("TPU_ACCELERATOR_TYPE", "v5litepod-16"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
               ("TF_CPP_MIN_LOG_LEVEL", "3")):
  os.environ.setdefault(_k, _v)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from magplus_jax import config_lib, sharding, train
from magplus_jax.models.flow import FlowEstimator, get_flow

GiB = 1024 ** 3
# HBM per chip (public TPU specs). Keys are jax's device_kind.
HBM_BYTES = {"TPU v4": 32 * GiB, "TPU v5 lite": 16 * GiB, "TPU v5": 95 * GiB, "TPU v5p": 95 * GiB,
             "TPU v6 lite": 32 * GiB, "TPU v6e": 32 * GiB}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
FSDP_RULES = ((".*kernel", "fsdp"), (".*", "replicate"))
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}


# ----------------------------------------------------------------------------------------- pieces
def topology_devices(topology: str, num_slices: int = 1) -> list:
  """The devices of a TPU topology such as "v5e:4x4" or "v5p:4x4x8" (needs the libtpu package)."""
  try:
    import libtpu  # noqa: F401  # pylint: disable=unused-import
  except ImportError as e:
    raise ImportError("launch/aot_check.py needs the libtpu package for TPU topologies: "
                      'pip install -e ".[tpu]"  (or pip install libtpu==0.0.52)') from e
  from jax.experimental import topologies
  try:
    topo = topologies.get_topology_desc(topology_name=topology, platform="tpu",
                                        **({"num_slices": num_slices} if num_slices > 1 else {}))
  except Exception as e:  # pylint: disable=broad-except  # libtpu raises XlaRuntimeError
    raise ValueError(f"--topology {topology!r} (num_slices={num_slices}) is not a TPU topology "
                     f"libtpu knows, e.g. v5e:4x4, v5p:4x4x8, v4:2x2x2, v6e:4x4: {e}") from e
  return list(topo.devices)


def batch_shards(mesh) -> int:
  """How many pieces the global batch is split into (the mesh's batch axes)."""
  return int(np.prod([mesh.shape[a] for a in sharding.BATCH_AXES if a in mesh.shape]))


def abstract_flow(flow_config) -> FlowEstimator:
  """The config's flow estimator with abstract (shape-only) parameters: RAFT needs no checkpoint."""
  if flow_config.name in ("raft", "raft_small"):
    from magplus_jax.models.flow import raft
    small = flow_config.name == "raft_small"
    graphdef, state = nnx.split(raft.abstract_model(small))
    return FlowEstimator(flow_config.name, state,
                         raft.make_flow_fn(graphdef, int(flow_config.get("iters", 12))))
  return get_flow(flow_config)  # weight-free estimators have nothing to load


def abstract_batch(config, batch_sharding) -> dict:
  """ShapeDtypeStructs of one global batch as data_pipelines/loader.py yields it."""
  b, n = int(config.batch_size), int(config.data.image_size)
  shapes = {"ref": ((b, n, n, 3), jnp.float32), "frame": ((b, n, n, 3), jnp.float32),
            "magnified": ((b, n, n, 3), jnp.float32), "flow": ((b, n, n, 2), jnp.float32),
            "alpha": ((b,), jnp.float32), "amplitude": ((b,), jnp.float32),
            "index": ((b,), jnp.int32)}
  return {k: jax.ShapeDtypeStruct(s, d, sharding=batch_sharding) for k, (s, d) in shapes.items()}


def parse_mesh(text: str) -> tuple[tuple[str, int], ...]:
  """"data:-1,fsdp:4" -> (("data", -1), ("fsdp", 4)); the model axis is added with size 1."""
  axes = []
  for part in text.split(","):
    name, _, size = part.strip().partition(":")
    if not name or not re.fullmatch(r"-?\d+", size.strip()):
      raise ValueError(f"--mesh {text!r}: expected name:size pairs like data:-1,fsdp:4")
    axes.append((name, int(size)))
  names = [a for a, _ in axes]
  for extra in ("data", "fsdp", "model"):
    if extra not in names:
      axes.append((extra, 1))
  return tuple(axes)


def count_collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """{op: {"count": n, "bytes": approx result bytes}} over the optimized HLO's instructions.

  Async pairs (`all-gather-start` / `-done`) count once, at the start; for a start op whose result
  is an (operand, result, ...) tuple the result array alone is counted.
  """
  out = {op: {"count": 0, "bytes": 0} for op in COLLECTIVES}
  pattern = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")
  for line in hlo_text.splitlines():
    m = pattern.search(line)
    if m is None:
      continue
    shape, op, start = m.groups()
    arrays = re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape)
    sizes = [_DTYPE_BYTES.get(d, 4) * int(np.prod([int(x) for x in dims.split(",") if x] or [1]))
             for d, dims in arrays]
    if start and op in ("all-gather", "collective-permute") and len(sizes) >= 2:
      sizes = sizes[1:2]  # (operand, result[, u32 contexts...]): the result moves
    out[op]["count"] += 1
    out[op]["bytes"] += int(sum(sizes))
  return out


def _cost(compiled) -> dict[str, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


def _memory(compiled) -> dict[str, int]:
  m = compiled.memory_analysis()
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "alias_size_in_bytes", "generated_code_size_in_bytes", "peak_memory_in_bytes")
  out = {f: int(getattr(m, f)) for f in fields if hasattr(m, f)}
  # Donated state buffers are aliased to outputs: count them once.
  total = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
           - out.get("alias_size_in_bytes", 0) + out["temp_size_in_bytes"])
  out["total_bytes"] = int(total)
  if not out.get("peak_memory_in_bytes"):
    out["peak_memory_in_bytes"] = int(total)
  return out


# ------------------------------------------------------------------------------------------- check
def aot_compile(config: ml_collections.ConfigDict, topology: str, num_slices: int = 1,
                step: str = "train", hlo_path: str | None = None) -> dict[str, Any]:
  """Lowers and compiles the real train (or eval) step of `config` for `topology`; a report dict."""
  config_lib.validate(config)
  devices = topology_devices(topology, num_slices)
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  shards = batch_shards(mesh)
  if config.batch_size % shards:
    raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the {shards} "
                     f"batch shards of mesh {dict(mesh.shape)} on {topology}: pass "
                     f"--per_device_batch N or --config.batch_size=<a multiple of {shards}>")
  flow = abstract_flow(config.flow)
  trainer = train.build_trainer(config, mesh, flow=flow)
  rep = sharding.replicated(mesh)
  flow_params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep),
                             flow.params)
  batch = abstract_batch(config, trainer.batch_sharding)
  fn = {"train": trainer.train_step, "eval": trainer.eval_step}[step]

  kind = devices[0].device_kind
  hbm = HBM_BYTES.get(kind)
  n_params = int(sum(int(np.prod(x.shape))
                     for x in jax.tree.leaves(trainer.abstract_state["params"])))
  sharded = [x for x in jax.tree.leaves(trainer.abstract_state)
             if any(ax is not None for ax in x.sharding.spec)]
  report = {
      "topology": topology, "num_slices": num_slices, "device_kind": kind, "chips": len(devices),
      "mesh": {k: int(v) for k, v in mesh.shape.items()}, "step": step,
      "config": {"task": config.task, "image_size": int(config.data.image_size),
                 "batch_size": int(config.batch_size),
                 "per_chip_batch": int(config.batch_size) // shards,
                 "levels": int(config.model.levels), "width": int(config.model.width),
                 "norm": config.model.norm, "flow": config.flow.name,
                 "flow_iters": int(config.flow.get("iters", 0)),
                 "sharding_rules": [list(r) for r in config.sharding_rules]},
      "params": n_params, "sharded_state_leaves": len(sharded), "hbm_per_chip": hbm,
  }

  t0 = time.perf_counter()
  lowered = fn.lower(trainer.abstract_state, batch, flow_params)
  t1 = time.perf_counter()
  report["lower_s"] = round(t1 - t0, 2)
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except  # XlaRuntimeError: the answer is "no"
    msg = str(e)
    oom = "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower()
    report.update(fits=False if oom else None, compile_s=round(time.perf_counter() - t1, 2),
                  error=("does not fit: " if oom else "compile failed: ") + _first_lines(msg))
    return report
  t2 = time.perf_counter()

  mem = _memory(compiled)
  cost = _cost(compiled)
  report.update(
      memory_per_chip=mem,
      fits=None if hbm is None else bool(mem["peak_memory_in_bytes"] <= hbm),
      cost_per_chip={"flops": float(cost.get("flops", 0.0)),
                     "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
                     "transcendentals": float(cost.get("transcendentals", 0.0))},
      compile_s=round(t2 - t1, 2))
  hlo = _optimized_hlo(compiled, report)
  if hlo is not None:
    report["collectives"] = count_collectives(hlo)
    if hlo_path:
      with open(hlo_path, "w") as f:
        f.write(hlo)
  return report


def _optimized_hlo(compiled, report) -> str | None:
  """The optimized HLO text; None (and the reason in the report) where XLA cannot print it.

  libtpu 0.0.52 with jax 0.10.2 fails to print the FlowMag v5p:4x4x8 executable (RET_CHECK
  "async-update instruction should have 1 operands but sees 3"): memory and cost still count.
  """
  try:
    return compiled.as_text()
  except Exception as e:  # pylint: disable=broad-except  # JaxRuntimeError from XLA
    report["collectives_error"] = _first_lines(str(e), 2)
    return None


def _first_lines(msg: str, n: int = 6) -> str:
  lines = [l.strip() for l in msg.splitlines() if l.strip()]
  return " | ".join(lines[:n])


def format_table(reports: list[dict]) -> str:
  head = ("topology", "chips", "mesh", "B/chip", "args GiB", "out GiB", "temp GiB", "peak GiB",
          "HBM GiB", "fits", "TFLOP/chip", "GB acc/chip", "AR/AG/RS/CP/A2A", "lower s",
          "compile s")
  rows, errors = [head], []
  for r in reports:
    mesh = "x".join(f"{k}{v}" for k, v in r["mesh"].items() if v > 1) or "1"
    name = r["topology"] + (f" x{r['num_slices']}" if r["num_slices"] > 1 else "")
    if "error" in r:
      rows.append((name, str(r["chips"]), mesh, str(r["config"]["per_chip_batch"]),
                   *["-"] * 4, "?" if r["hbm_per_chip"] is None else
                   f"{r['hbm_per_chip'] / GiB:.0f}", {False: "NO", None: "?"}[r["fits"]],
                   *["-"] * 3, f"{r['lower_s']:.1f}", f"{r['compile_s']:.1f}"))
      errors.append(f"{name}: {r['error']}")
      continue
    m, c = r["memory_per_chip"], r["cost_per_chip"]
    if "collectives_error" in r:
      errors.append(f"{name}: collectives unknown, XLA could not print the optimized HLO: "
                    f"{r['collectives_error']}")
    coll = ("/".join(str(r["collectives"][op]["count"]) for op in COLLECTIVES)
            if "collectives" in r else "?")
    rows.append((name, str(r["chips"]), mesh, str(r["config"]["per_chip_batch"]),
                 f"{m['argument_size_in_bytes'] / GiB:.2f}",
                 f"{m['output_size_in_bytes'] / GiB:.2f}",
                 f"{m['temp_size_in_bytes'] / GiB:.2f}", f"{m['peak_memory_in_bytes'] / GiB:.2f}",
                 "?" if r["hbm_per_chip"] is None else f"{r['hbm_per_chip'] / GiB:.0f}",
                 {True: "yes", False: "NO", None: "?"}[r["fits"]], f"{c['flops'] / 1e12:.3f}",
                 f"{c['bytes_accessed'] / 1e9:.2f}", coll, f"{r['lower_s']:.1f}",
                 f"{r['compile_s']:.1f}"))
  widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
  return "\n".join(["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows] + errors)


# -------------------------------------------------------------------------------------------- main
def _main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  config = f.config
  with config.unlocked():
    if f.mesh:
      config.mesh = parse_mesh(f.mesh)
    if f.fsdp:
      config.sharding_rules = FSDP_RULES
  reports = []
  for topology in f.topology:
    cfg = ml_collections.ConfigDict(config.to_dict())
    try:
      mesh = sharding.make_mesh(cfg.mesh, devices=topology_devices(topology, f.num_slices))
    except (ValueError, ImportError) as e:
      print(f"aot_check: {e}", file=sys.stderr)
      sys.exit(2)
    shards = batch_shards(mesh)
    if f.per_device_batch:
      cfg.batch_size = f.per_device_batch * shards
    elif cfg.batch_size % shards:  # the nearest global batch the slice can split evenly
      new = -(-cfg.batch_size // shards) * shards
      print(f"{topology}: config.batch_size={cfg.batch_size} does not split over {shards} batch "
            f"shards; compiling with {new} ({new // shards} per chip). Set it with "
            "--per_device_batch N.", flush=True)
      cfg.batch_size = new
    hlo_path = (os.path.join(f.hlo_dir, topology.replace(":", "_") + ".hlo.txt")
                if f.hlo_dir else None)
    if f.hlo_dir:
      os.makedirs(f.hlo_dir, exist_ok=True)
    print(f"compiling the {f.step} step for {topology} (slices {f.num_slices}) ...", flush=True)
    try:
      reports.append(aot_compile(cfg, topology, f.num_slices, f.step, hlo_path))
    except (ValueError, ImportError) as e:
      print(f"aot_check: {e}", file=sys.stderr)
      sys.exit(2)
    print(format_table(reports[-1:]), flush=True)
  if len(reports) > 1:
    print(format_table(reports))
  if f.out:
    with open(f.out, "w") as fh:
      json.dump(reports, fh, indent=2)
    print(f"wrote {f.out}")
  # Exit status 1 when a step does not fit (or did not compile): usable as a pre-launch gate.
  sys.exit(1 if any(r.get("error") or r["fits"] is False for r in reports) else 0)


def main():
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", os.path.join(_ROOT, "configs", "flowmag.py"),
                                  "ml_collections config file (with :arg).", lock_config=True)
  flags.DEFINE_multi_string("topology", ["v5e:4x4", "v5p:4x4x8"], "TPU topology, e.g. v5e:4x4, "
                            "v5p:4x4x8; repeat the flag for several.")
  flags.DEFINE_integer("num_slices", 1, "Number of slices (multi-slice over DCN).")
  flags.DEFINE_string("mesh", "", "Override config.mesh, e.g. data:-1,fsdp:4.")
  flags.DEFINE_bool("fsdp", False, "Shard every kernel over the fsdp axis (config.sharding_rules).")
  flags.DEFINE_integer("per_device_batch", 0, "Set config.batch_size to this x batch shards "
                       "(default: config.batch_size, rounded up to a multiple of the shards).")
  flags.DEFINE_enum("step", "train", ["train", "eval"], "Which jitted step to compile.")
  flags.DEFINE_string("out", "", "Write the reports as JSON here.")
  flags.DEFINE_string("hlo_dir", "", "Write each optimized HLO module here.")
  app.run(_main)


if __name__ == "__main__":
  main()
