"""The one optical-flow interface.

Every consumer (the magnifier losses, alpha calibration, the metrics, the warp backbone, landmark
tracking) holds a `FlowEstimator` and calls `flow_fn(params, image1, image2)`:

  image1, image2: [B, H, W, 3] RGB in [0, 1]  ->  flow [B, H, W, 2], (x, y) in pixels, image1 -> image2

i.e. the pixel at p in image1 is found at p + flow[p] in image2. The function is pure (jit, vmap and
grad work on it; gradients reach both images) and its `params` are frozen: the trainer closes over
them and never differentiates with respect to them.

Estimators are chosen by `config.flow.name`:
  * "pyramid_lk": weight-free coarse-to-fine Lucas-Kanade, unrolled in JAX (embedded default, no
    download needed).
  * "raft", "raft_small": RAFT ported from princeton-vl/RAFT; weights from `config.flow.checkpoint`,
    a directory written by `python -m magplus_jax.ports.raft`.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import jax

Array = jax.Array
FlowFn = Callable[[Any, Array, Array], Array]

# name -> module exporting `build(flow_config) -> FlowEstimator`.
_ESTIMATORS = {
    "pyramid_lk": "magplus_jax.models.flow.lucas_kanade",
    "raft": "magplus_jax.models.flow.raft",
    "raft_small": "magplus_jax.models.flow.raft",
}


@dataclasses.dataclass(frozen=True)
class FlowEstimator:
  """A frozen flow network: `flow_fn(params, image1, image2) -> [B, H, W, 2]`."""
  name: str
  params: Any
  flow_fn: FlowFn

  def __call__(self, image1: Array, image2: Array) -> Array:
    return self.flow_fn(self.params, image1, image2)


def names() -> list[str]:
  return sorted(_ESTIMATORS)


def get_flow(flow_config) -> FlowEstimator:
  """Builds the estimator named by `flow_config.name` (an ml_collections ConfigDict)."""
  name = flow_config.name
  if name not in _ESTIMATORS:
    raise ValueError(f"config.flow.name={name!r} is not a flow estimator; choose one of {names()}")
  return importlib.import_module(_ESTIMATORS[name]).build(flow_config)
