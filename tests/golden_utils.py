"""Shared loader for the golden fixtures (reference numbers from the official PyTorch code).

  npz, meta, state_dict = load_fixture("raft_full")   # or "raft_full.npz"

The fixture directory is $MAGPLUS_GOLDEN_DIR, default tests/golden of the project. The weights are
not stored: `golden_weights.py` from THAT directory (imported by path, so a fixture set always comes
with its own recipe) rebuilds them from meta["spec"] and meta["seed"], and the result is checked
against meta["weights_sha256"] (sha256 over the arrays' bytes in spec order) before any test uses
it. Regeneration takes seconds for the big models, so it is cached per process: treat the returned
dicts as read-only.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os

import numpy as np

_DEFAULT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")


def golden_dir() -> str:
  return os.environ.get("MAGPLUS_GOLDEN_DIR") or _DEFAULT_DIR


def _path(name: str) -> str:
  path = os.path.join(golden_dir(), name if name.endswith(".npz") else name + ".npz")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"golden fixture {path!r} not found (copy it from shared/golden into "
                            "tests/golden, or set MAGPLUS_GOLDEN_DIR)")
  return path


@functools.lru_cache(maxsize=None)
def _golden_weights_module(directory: str):
  path = os.path.join(directory, "golden_weights.py")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path!r} not found: the fixtures need their weight recipe next to them")
  digest = hashlib.sha1(path.encode()).hexdigest()[:12]
  spec = importlib.util.spec_from_file_location(f"golden_weights_{digest}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def weights_sha256(state_dict, spec) -> str:
  """sha256 over state_dict[name].tobytes() (C order, little endian) for name in spec order."""
  h = hashlib.sha256()
  for entry in spec:
    v = np.ascontiguousarray(state_dict[entry[0]])
    h.update(v.astype(v.dtype.newbyteorder("<"), copy=False).tobytes())
  return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _load(path: str):
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files if k != "meta"}
    meta = json.loads(str(z["meta"]))
  module = _golden_weights_module(os.path.dirname(path))
  state_dict = module.make_state_dict(meta["spec"], meta["seed"])
  got = weights_sha256(state_dict, meta["spec"])
  if got != meta["weights_sha256"]:
    raise AssertionError(f"{path}: regenerated weights have sha256 {got}, the fixture says "
                         f"{meta['weights_sha256']} ({meta.get('weights_sha256_note', '')}); "
                         "golden_weights.py and the .npz do not belong together")
  return arrays, meta, state_dict


def load_fixture(name: str):
  """-> (arrays: dict name -> np.ndarray (no 'meta'), meta: dict, state_dict: dict torch name ->
  np.ndarray), the weights already checked against meta['weights_sha256']."""
  return _load(os.path.abspath(_path(name)))
