"""What every checkpoint converter shares: reading a torch file, checking it, mapping layouts.

Converters are the only place (with bench/) that imports torch, and they import it lazily so the rest
of the package never needs it. A converter:
  1. `load_torch_file(path)` -> nested dict of numpy arrays (no torch tensors escape);
  2. `check_state_dict(sd, expected_spec, what=...)` -> raises one `CheckpointMismatchError` naming
     missing keys, unexpected keys and shape mismatches (a RAFT file given to the FOMM converter fails
     here, with the keys that prove it);
  3. maps torch layouts to Flax with `conv_kernel` / `linear_kernel`;
  4. saves with `magplus_jax.checkpointing.save_pretrained(out_dir, params, model=...)`, whose
     metadata lets `load_pretrained` refuse a checkpoint of another model.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Mapping

import numpy as np

# Defined in the checkpoint layer, which the models use too (models must not import ports);
# re-exported here for the converters.
from magplus_jax.checkpointing import CheckpointMismatchError, check_state_dict  # pylint: disable=unused-import


def load_torch_file(path: str) -> dict:
  """Reads a .pth / .pt / .pth.tar file into plain numpy (nested dicts kept)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint {path!r}: no such file")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("converting a PyTorch checkpoint needs torch: pip install -e '.[torch]'") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=False)
  except Exception as e:  # torch raises many types for a corrupt file
    raise CheckpointMismatchError(f"checkpoint {path!r} is not a readable PyTorch file: {e}") from e

  def to_np(x):
    if isinstance(x, torch.Tensor):
      return x.detach().cpu().numpy()
    if isinstance(x, Mapping):
      return {k: to_np(v) for k, v in x.items()}
    return x
  return to_np(obj)


def run_cli(main: Callable[[], Any], prog: str) -> Any:
  """Runs a converter's `main()`: an input error (missing or non-torch file, a checkpoint of another
  model, an existing output directory, no torch) ends with ONE line `prog: error: ...` on stderr
  and exit status 1, as `python -m magplus_jax.main` does, instead of a traceback."""
  try:
    return main()
  except (ValueError, OSError, ImportError) as e:  # CheckpointMismatchError is a ValueError
    msg = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    print(f"{prog}: error: {msg}", file=sys.stderr)
    sys.exit(1)


def strip_prefix(sd: Mapping[str, np.ndarray], prefix: str) -> dict:
  """Drops `prefix` (e.g. DataParallel's 'module.') from the keys that carry it."""
  return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """torch Conv weight [O, I, *k] -> Flax kernel [*k, I, O] (2-D and 3-D)."""
  w = np.asarray(w)
  return np.transpose(w, tuple(range(2, w.ndim)) + (1, 0))


def conv_transpose_kernel(w: np.ndarray) -> np.ndarray:
  """torch ConvTranspose weight [I, O, *k] -> Flax ConvTranspose kernel [*k, I, O] (flipped)."""
  w = np.asarray(w)
  k = np.transpose(w, tuple(range(2, w.ndim)) + (0, 1))
  return k[tuple(slice(None, None, -1) for _ in range(w.ndim - 2))].copy()


def linear_kernel(w: np.ndarray) -> np.ndarray:
  """torch Linear weight [O, I] -> Flax kernel [I, O]."""
  return np.asarray(w).T.copy()
