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
Batches are sharded over ("data", "fsdp") on their leading dimension: FSDP shards the batch like
data parallelism and additionally the parameters and optimizer state.
Activations need no annotation in these conv nets: XLA propagates the batch sharding.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_axes: Sequence[tuple[str, int]], devices=None) -> Mesh:
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
  try:
    dev = jax.experimental.mesh_utils.create_device_mesh(sizes, devices)
  except Exception:  # pylint: disable=broad-except  # e.g. CPU or AOT topologies without a layout
    dev = np.asarray(devices).reshape(sizes)
  return Mesh(dev, names)


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


def batch_sharding(mesh: Mesh) -> NamedSharding:
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  return NamedSharding(mesh, P(axes))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Per-process numpy batch -> global jax.Arrays sharded over the batch axes of the mesh."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)


_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def maybe_initialize_distributed() -> bool:
  """jax.distributed.initialize() where a multi-process job is detected; a no-op on one machine.

  Detected: an explicit coordinator address, a SLURM job with more than one task, or a multi-host
  TPU slice (several TPU_WORKER_HOSTNAMES). Idempotent.
  """
  import os  # pylint: disable=g-import-not-at-top
  env = os.environ
  multi = (any(env.get(k) for k in _CLUSTER_ENV)
           or int(env.get("SLURM_NTASKS", "1")) > 1
           or len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1)
  if not multi or jax.distributed.is_initialized():
    return False
  jax.distributed.initialize()
  return True
