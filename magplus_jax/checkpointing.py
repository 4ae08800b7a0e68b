"""The one checkpoint path: converted pretrained weights and training checkpoints, all through orbax.

Pretrained weights (written by the converters in magplus_jax/ports, read by generate/evaluate):
  <dir>/params/           orbax StandardCheckpointer tree of numpy arrays (Flax layouts)
  <dir>/magplus_meta.json {"model": <name>, "config": {...}, "source": <original file>}
`load_pretrained(dir, model=...)` refuses a directory that holds another model, naming both, so a
RAFT checkpoint given as FOMM fails with one clear message instead of a shape error deep in XLA.
Directories are written under a temporary name and renamed at the end: an interrupted conversion
never leaves a half-written directory under the final name, and an existing one is never replaced.

Training checkpoints: see `TrainCheckpointer` below.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

META_FILE = "magplus_meta.json"


class CheckpointMismatchError(ValueError):
  """A checkpoint does not hold the model it is given as."""


def check_state_dict(sd: Mapping[str, np.ndarray], expected: Mapping[str, tuple],
                     what: str, ignore: tuple[str, ...] = ("num_batches_tracked",)) -> None:
  """Raises CheckpointMismatchError unless `sd` has exactly the expected names and shapes.

  expected: name -> shape. Keys ending in any of `ignore` are skipped on both sides.
  """
  keep = lambda k: not k.endswith(ignore)
  have = {k for k in sd if keep(k)}
  want = {k for k in expected if keep(k)}
  missing = sorted(want - have)
  unexpected = sorted(have - want)
  shapes = sorted(f"{k}: checkpoint {tuple(np.shape(sd[k]))}, model {tuple(expected[k])}"
                  for k in have & want if tuple(np.shape(sd[k])) != tuple(expected[k]))
  if not (missing or unexpected or shapes):
    return
  def show(items, n=8):
    return ", ".join(items[:n]) + (f" ... (+{len(items) - n} more)" if len(items) > n else "")
  parts = [f"{what}: the checkpoint does not match the model."]
  if missing:
    parts.append(f"missing keys ({len(missing)}): {show(missing)}")
  if unexpected:
    parts.append(f"unexpected keys ({len(unexpected)}): {show(unexpected)}")
  if shapes:
    parts.append(f"shape mismatches ({len(shapes)}): {show(shapes)}")
  raise CheckpointMismatchError("\n  ".join(parts))


@contextlib.contextmanager
def _staged_dir(out_dir: str, overwrite: bool = False):
  """Yields a fresh temporary directory beside out_dir, renamed to out_dir when the block ends
  without error (an existing out_dir is replaced only with overwrite): a reader never sees a
  half-written checkpoint, and a failure leaves what was there before untouched."""
  if os.path.exists(out_dir) and not overwrite:
    raise FileExistsError(f"{out_dir!r} already exists; not overwriting it")
  tmp = out_dir + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  yield tmp
  if os.path.exists(out_dir):
    old = out_dir + ".old"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old)
  else:
    os.rename(tmp, out_dir)


def save_pretrained(out_dir: str, params: Any, *, model: str, config: dict | None = None,
                    source: str = "", overwrite: bool = False) -> str:
  """Writes `params` (a pytree of arrays) and its metadata to `out_dir` (must not exist, unless
  overwrite: then it is replaced once the new one is complete)."""
  out_dir = os.path.abspath(out_dir)
  params = jax.tree.map(np.asarray, params)
  with _staged_dir(out_dir, overwrite) as tmp:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, "params"), params)
    with open(os.path.join(tmp, META_FILE), "w") as f:
      json.dump({"model": model, "config": config or {}, "source": source}, f, indent=2)
  return out_dir


def read_pretrained_meta(ckpt_dir: str) -> dict:
  path = os.path.join(ckpt_dir, META_FILE)
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"checkpoint directory {ckpt_dir!r} does not exist")
  if not os.path.isfile(path):
    raise CheckpointMismatchError(
        f"{ckpt_dir!r} is not a magplus_jax checkpoint (no {META_FILE}); convert official weights "
        "with `python -m magplus_jax.ports.<model> ...` first")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointMismatchError(f"{path!r} is corrupt: {e}") from e


def load_pretrained(ckpt_dir: str, *, model: str | tuple[str, ...]) -> tuple[Any, dict]:
  """Returns (params as numpy pytree, metadata); raises if the directory holds another model."""
  meta = read_pretrained_meta(ckpt_dir)
  models = (model,) if isinstance(model, str) else tuple(model)
  if meta.get("model") not in models:
    raise CheckpointMismatchError(
        f"checkpoint {ckpt_dir!r} holds model {meta.get('model')!r}, expected {' or '.join(models)}")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      params = ckptr.restore(os.path.abspath(os.path.join(ckpt_dir, "params")))
  except Exception as e:  # orbax raises several types for damaged trees
    raise CheckpointMismatchError(f"checkpoint {ckpt_dir!r} could not be read: {e}") from e
  return params, meta


# ------------------------------------------------------------------------------------------------
# Training checkpoints.
# ------------------------------------------------------------------------------------------------
class TrainCheckpointer:
  """orbax CheckpointManager over {"state": train state pytree, "data": grain iterator state}.

  * async saves; keep the newest `keep` plus every `keep_every`-th step (0 = none extra);
  * `restore_latest` restores into the shardings of the *current* mesh (a run resumes on another
    device count), and falls back to the previous step when the newest is unreadable (half-written,
    deleted files, garbage bytes), saying so; nothing is deleted by the fallback.
  """

  def __init__(self, directory: str, *, keep: int = 3, keep_every: int = 0, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every or None, create=True,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self.unreadable_steps: set[int] = set()  # found by restore_latest; set aside before a re-save

  def save(self, step: int, state: Any, data_iterator=None, force: bool = False) -> bool:
    import grain  # pylint: disable=g-import-not-at-top
    if step in self.unreadable_steps:  # orbax refuses to overwrite a step: move the bad one aside
      self._set_aside(step)
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def _set_aside(self, step: int) -> None:
    """Renames an unreadable step directory to <step>.unreadable[-n] (kept, never deleted; orbax
    ignores the name) so that the resumed run can write that step again."""
    from absl import logging  # pylint: disable=g-import-not-at-top
    self.manager.wait_until_finished()
    src = os.path.join(self.directory, str(step))
    if jax.process_index() == 0 and os.path.isdir(src):
      dst, n = src + ".unreadable", 1
      while os.path.exists(dst):
        dst, n = f"{src}.unreadable-{n}", n + 1
      os.rename(src, dst)
      logging.warning("moved unreadable checkpoint step %d aside to %s (kept for inspection)",
                      step, dst)
    self.unreadable_steps.discard(step)
    self.manager.reload()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore_latest(self, abstract_state: Any, data_iterator=None, log=print):
    """Returns (step, state, data_iterator) of the newest readable checkpoint, or None."""
    import grain  # pylint: disable=g-import-not-at-top
    steps = sorted(self.manager.all_steps(), reverse=True)
    for i, step in enumerate(steps):
      items = {"state": ocp.args.StandardRestore(abstract_state)}
      if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:  # pylint: disable=broad-except  # orbax raises many types
        older = f"trying step {steps[i + 1]}" if i + 1 < len(steps) else "no older checkpoint left"
        log(f"checkpoint step {step} in {self.directory} is unreadable ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); {older}")
        self.unreadable_steps.add(step)
        continue
      return step, restored["state"], (restored["data"] if data_iterator is not None else None)
    return None

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def latest_training_step(directory: str) -> int | None:
  """The newest step orbax lists in a training checkpoints directory (None: no checkpoint)."""
  mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  step = mngr.latest_step()
  mngr.close()
  return step


def restore_latest_training_state(workdir: str) -> tuple[int, Any]:
  """(step, state) of the newest training checkpoint of `workdir` (or of its checkpoints dir), as
  saved: host numpy arrays in the saved tree, whatever mesh wrote it. The one reader the exporters
  and tests use, so they agree on which checkpoint is "the newest"."""
  workdir = os.path.abspath(workdir)
  sub = os.path.join(workdir, "checkpoints")
  directory = sub if os.path.isdir(sub) else workdir
  step = latest_training_step(directory) if os.path.isdir(directory) else None
  if step is None:
    raise CheckpointMismatchError(f"{workdir!r} holds no training checkpoint")
  with ocp.StandardCheckpointer() as ckptr:
    return step, ckptr.restore(os.path.join(directory, str(step), "state"))


def load_magnifier_variables(ckpt_dir: str, abstract_variables: Any) -> Any:
  """(params, rest) of a MagPlus/DeMagPlus network from a training workdir or its checkpoints dir.

  The variables' structure must match the config's network: a checkpoint of another size or of
  another model fails with one message naming the directory.
  """
  ckpt_dir = os.path.abspath(ckpt_dir)
  sub = os.path.join(ckpt_dir, "checkpoints")
  directory = sub if os.path.isdir(sub) else ckpt_dir
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"magnifier checkpoint {ckpt_dir!r} does not exist")
  step = latest_training_step(directory)
  if step is None:
    raise CheckpointMismatchError(f"{ckpt_dir!r} holds no training checkpoint")
  path = os.path.join(directory, str(step), "state")
  try:  # onto one local device, whatever mesh wrote it
    with ocp.StandardCheckpointer() as ckptr:
      meta = ckptr.metadata(path).item_metadata
      meta = getattr(meta, "tree", meta)
      dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      state = ckptr.restore(path, jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), meta))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointMismatchError(f"magnifier checkpoint {ckpt_dir!r} (step {step}) could not be "
                                  f"read: {str(e).splitlines()[0][:300]}") from e
  if not isinstance(state, dict) or not {"params", "model_state"} <= set(state):
    raise CheckpointMismatchError(f"{ckpt_dir!r} is not a MagPlus/DeMagPlus training checkpoint")
  try:
    return (_like(state["params"], abstract_variables[0]),
            _like(state["model_state"], abstract_variables[1]))
  except (KeyError, ValueError) as e:
    raise CheckpointMismatchError(
        f"magnifier checkpoint {ckpt_dir!r} holds a network of another architecture than "
        f"config.model ({e})") from e


def _like(restored: Any, target: Any) -> Any:
  """`restored` in the structure of `target`: orbax stores integer dict keys (nnx.List) as strings."""
  def pick(path, leaf):
    node = restored
    for k in path:
      key = getattr(k, "key", getattr(k, "idx", None))
      node = node[str(key)] if str(key) in node else node[key]
    if tuple(np.shape(node)) != tuple(np.shape(leaf)):
      raise ValueError(f"{jax.tree_util.keystr(path)}: checkpoint {np.shape(node)}, "
                       f"model {np.shape(leaf)}")
    return node
  out = jax.tree_util.tree_map_with_path(pick, target)
  n_restored = len(jax.tree.leaves(restored))
  if n_restored != len(jax.tree.leaves(target)):
    raise ValueError(f"checkpoint has {n_restored} arrays, model {len(jax.tree.leaves(target))}")
  return out


def export_magnifier(workdir: str, out_dir: str, *, overwrite: bool = False,
                     extra_files: tuple[str, ...] = ("config.json", "calibration.json")) -> int:
  """Writes the newest MagPlus/DeMagPlus network of training `workdir` to `out_dir`, weights only.

  The result has the layout of a training workdir (<out_dir>/checkpoints/<step>/state, with
  {"params", "model_state", "step"}: no optimizer moments, a third of the size), so everything
  that loads a training checkpoint (`load_magnifier_variables`) loads it unchanged. `extra_files`
  of the workdir (its config and calibration target) are copied beside it. Written under a
  temporary name and renamed at the end; an existing out_dir is replaced only with `overwrite`.
  Returns the exported step.
  """
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and not overwrite:
    raise FileExistsError(f"{out_dir!r} exists; pass overwrite=True to replace it")
  step, state = restore_latest_training_state(workdir)
  weights = {"params": state["params"], "model_state": state["model_state"],
             "step": np.asarray(step, np.int32)}
  with _staged_dir(out_dir, overwrite) as tmp:
    with ocp.CheckpointManager(os.path.join(tmp, "checkpoints"),
                               options=ocp.CheckpointManagerOptions(create=True)) as out:
      out.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(weights)))
      out.wait_until_finished()
    for name in extra_files:
      if os.path.exists(os.path.join(workdir, name)):
        shutil.copy2(os.path.join(workdir, name), os.path.join(tmp, name))
  return step
