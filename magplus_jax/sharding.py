"""Mesh, parameter sharding rules and global batches (big_vision style).

The mesh comes from `config.mesh`: a list of (axis name, size) pairs, one size may be -1 (the rest
of the devices). The default is data parallel, [("data", -1), ("fsdp", 1), ("model", 1)].

Parameters are placed by `config.sharding_rules`: (regex, rule) pairs matched in order against the
parameter's path joined with "/" (e.g. "down/0/conv1/kernel"); the first match wins:
  * "replicate"          -> fully replicated;
  * "fsdp"               -> the largest dimension divisible by the fsdp axis size is sharded over
                            it (replicated if none divides);
  * a tuple/list of axis names or None per dimension, e.g. (None, None, None, "model") -> that
    PartitionSpec, checked for divisibility.
Activations and batches are named by logical axes ("batch", "time", "height", "width",
"channels"), which ACTIVATION_AXIS_RULES maps to mesh axes: "batch" over ("data", "fsdp"), so FSDP
shards the batch like data parallelism and additionally the parameters and optimizer state;
"channels" over "model" (size 1 unless a config asks for tensor parallelism); the rest whole.
The batch's sharding is derived from these rules; inside the conv nets XLA propagates it, and
`constrain(x, names, mesh)` pins an activation where propagation needs help.
"""
from __future__ import annotations

import os
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Logical activation axis -> mesh axis (or axes, or None: not sharded).
ACTIVATION_AXIS_RULES = (("batch", ("data", "fsdp")), ("time", None), ("height", None),
                         ("width", None), ("channels", "model"))
BATCH_AXES = dict(ACTIVATION_AXIS_RULES)["batch"]


def make_mesh(mesh_axes: Sequence[tuple[str, int]], devices=None) -> Mesh:
  """The config's mesh over `devices` (default: all), laid out along the physical topology.

  On TPU the device order follows the interconnect (mesh_utils.create_device_mesh). Devices of
  several slices (multi-slice over DCN) are split across slices on the "data" axis only, which
  must be divisible by the number of slices: only the gradient all-reduce crosses DCN.
  """
  devices = list(jax.devices()) if devices is None else list(devices)
  names = [a for a, _ in mesh_axes]
  sizes = [int(s) for _, s in mesh_axes]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh={list(mesh_axes)}: at most one axis may have size -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"config.mesh={list(mesh_axes)} does not divide {len(devices)} devices")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"config.mesh={list(mesh_axes)} needs {int(np.prod(sizes))} devices, "
                     f"{len(devices)} are available")
  return Mesh(_device_array(sizes, names, devices), names)


def _device_array(sizes: list[int], names: list[str], devices: list) -> np.ndarray:
  if devices[0].platform != "tpu":  # CPU / GPU: no interconnect topology to follow
    return np.asarray(devices).reshape(sizes)
  num_slices = len({getattr(d, "slice_index", 0) for d in devices})
  split = devices[0].device_kind in ("TPU v5 lite", "TPU v5e")  # what jax.make_mesh allows
  if num_slices == 1:
    return mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=split)
  if "data" not in names or sizes[names.index("data")] % num_slices:
    raise ValueError(f"mesh {dict(zip(names, sizes))} over {num_slices} slices: the 'data' axis "
                     f"must be divisible by the number of slices")
  dcn = [num_slices if n == "data" else 1 for n in names]
  ici = [s // d for s, d in zip(sizes, dcn)]
  return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=split)


def _path_str(path) -> str:
  parts = []
  for k in path:
    parts.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
  return "/".join(parts)


def spec_for(name: str, shape: tuple[int, ...], rules, mesh: Mesh) -> P:
  for pattern, rule in rules:
    if re.fullmatch(pattern, name) is None:
      continue
    if rule == "replicate" or not shape:
      return P()
    if rule == "fsdp":
      n = mesh.shape.get("fsdp", 1)
      if n == 1:
        return P()
      for d in sorted(range(len(shape)), key=lambda i: -shape[i]):
        if shape[d] % n == 0:
          spec = [None] * len(shape)
          spec[d] = "fsdp"
          return P(*spec)
      return P()
    spec = tuple(rule)
    if len(spec) != len(shape):
      raise ValueError(f"sharding rule {pattern!r} -> {rule} has {len(spec)} dims; "
                       f"parameter {name} has shape {shape}")
    for dim, ax in zip(shape, spec):
      if ax is not None and dim % mesh.shape[ax]:
        raise ValueError(f"sharding rule {pattern!r}: dim {dim} of {name} {shape} is not divisible "
                         f"by mesh axis {ax!r} of size {mesh.shape[ax]}")
    return P(*spec)
  return P()


def tree_shardings(tree: Any, rules, mesh: Mesh) -> Any:
  """NamedShardings for every array leaf of `tree` (shapes only are read: works on abstract trees)."""
  def one(path, leaf):
    return NamedSharding(mesh, spec_for(_path_str(path), tuple(np.shape(leaf)), rules, mesh))
  return jax.tree_util.tree_map_with_path(one, tree)


def logical_spec(names: Sequence[str | None], mesh: Mesh,
                 rules=ACTIVATION_AXIS_RULES) -> P:
  """PartitionSpec of an array whose dimensions have these logical names (None: not sharded).

  Mesh axes the mesh lacks are dropped, so one set of rules serves every mesh.
  """
  table = dict(rules)
  spec = []
  for name in names:
    if name is not None and name not in table:
      raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
    axes = table.get(name) if name is not None else None
    if isinstance(axes, str):
      spec.append(axes if axes in mesh.axis_names else None)
    else:
      axes = tuple(a for a in axes or () if a in mesh.axis_names)
      spec.append(axes or None)
  return P(*spec)


def constrain(x: jax.Array, names: Sequence[str | None], mesh: Mesh,
              rules=ACTIVATION_AXIS_RULES) -> jax.Array:
  """x laid out by its logical axis names (inside jit: a sharding constraint for XLA)."""
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_spec(names, mesh, rules)))


def batch_sharding(mesh: Mesh, rules=ACTIVATION_AXIS_RULES) -> NamedSharding:
  """Every batch array is split on its leading ("batch") dimension, whole along the others."""
  return NamedSharding(mesh, logical_spec(("batch",), mesh, rules))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Per-process numpy batch -> global jax.Arrays sharded over the batch axes of the mesh."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)


def to_host(x: jax.Array) -> np.ndarray:
  """The whole of a global array as numpy on every process (e.g. sample images to write).

  np.asarray refuses an array whose shards live partly on other hosts; those are all-gathered.
  """
  if getattr(x, "is_fully_addressable", True) or x.sharding.is_fully_replicated:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")
# Set by launch/tpu_pod.py and launch/slurm.py: "1" always initialises, "0" never.
FORCE_ENV = "MAGPLUS_DISTRIBUTED"


def is_multi_process_job(env=None) -> bool:
  """Whether this process is one of several (so jax.distributed must be initialised first).

  Detected: MAGPLUS_DISTRIBUTED=1 (the launchers set it; 0 switches detection off), an explicit
  coordinator address, a SLURM job with more than one task, or a multi-host TPU slice (several
  TPU_WORKER_HOSTNAMES). A plain single-machine run matches none of these.
  """
  env = os.environ if env is None else env
  if env.get(FORCE_ENV, "") in ("0", "1"):
    return env[FORCE_ENV] == "1"
  return bool(any(env.get(k) for k in _CLUSTER_ENV)
              or int(env.get("SLURM_NTASKS", "1") or 1) > 1
              or len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1)


def maybe_initialize_distributed() -> bool:
  """jax.distributed.initialize() in a multi-process job (its arguments come from the cluster:
  Cloud TPU metadata, SLURM variables or JAX_COORDINATOR_ADDRESS); a no-op on one machine and
  when already initialised. Must run before anything touches a jax backend. True if it initialised.
  """
  if not is_multi_process_job() or jax.distributed.is_initialized():
    return False
  jax.distributed.initialize()
  return True
