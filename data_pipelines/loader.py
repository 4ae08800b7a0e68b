"""grain pipelines over the procedural data set: deterministic, split per process, checkpointable.

Train: range(num_train_examples) -> shuffle(seed) (lazy, reshuffled every epoch by repeat) ->
[process_index::process_count] -> repeat -> map(generate) -> batch(per-process, drop_remainder) ->
to_iter_dataset(ReadOptions) [-> mp_prefetch(num_workers)].
Eval: range(num_eval_examples) of the held-out split, no shuffle, no repeat.

Every example is a pure function of (data seed, split, example index), so the iterator state that
grain checkpoints (a position) is all that is needed to resume exactly; save it with
`grain.checkpoint.CheckpointSave(it)` inside an orbax Composite (see ../shared/STACK.md).

Batches are dicts of numpy arrays with leading dim global_batch_size // process_count:
  ref, frame, magnified [B, H, W, 3] float32 in [0, 1]; flow [B, H, W, 2] float32 (x, y pixels,
  ref -> frame, `resample.warp(frame, flow) ~= ref`); alpha [B] float32; amplitude [B] float32
  (max |flow| per example); index [B] int32 (example id within its split).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from data_pipelines import images, procedural

DEFAULT_NUM_TRAIN = 1 << 20
DEFAULT_NUM_EVAL = 512


@dataclasses.dataclass(frozen=True)
class ProceduralExample:
  """Picklable index -> example function (grain worker processes receive a copy)."""
  spec: procedural.ProceduralSpec
  split: str
  seed: int

  def __call__(self, index) -> dict[str, np.ndarray]:
    return procedural.generate_example(self.spec, self.split, self.seed, int(index))


def per_process_batch(global_batch_size: int, process_index: int, process_count: int) -> int:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} must be in [0, process_count={process_count})")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of "
                     f"process_count {process_count}")
  return global_batch_size // process_count


def _check_name(data_config: Any) -> None:
  name = data_config.get("name", "procedural")
  if name != "procedural":
    raise ValueError(f"data.name: this loader builds 'procedural', got {name!r}")


def read_options(data_config: Any) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=int(data_config.get("num_threads", 2)),
                           prefetch_buffer_size=int(data_config.get("prefetch_buffer_size", 4)))


@dataclasses.dataclass(frozen=True)
class _WarmSources:
  """grain worker_init_fn: build the split's source images before the first example."""
  split: str
  sources: str

  def __call__(self, worker_index: int, worker_count: int) -> None:
    del worker_index, worker_count
    images.warm(self.split, self.sources)


def maybe_mp_prefetch(ds: grain.IterDataset, data_config: Any, split: str) -> grain.IterDataset:
  workers = int(data_config.get("num_workers", 0))
  if workers <= 0:
    return ds
  # grain's worker processes read absl flags; programs not started by absl.app have none parsed.
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  init = None
  if data_config.get("warm_sources", False):
    init = _WarmSources(split, procedural.ProceduralSpec.from_config(data_config).sources)
  buffer = int(data_config.get("per_worker_buffer_size", 2))
  return ds.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer),
      worker_init_fn=init)


def train_map_dataset(data_config: Any, *, split: str, seed: int, global_batch_size: int,
                      process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """The batched, infinitely repeated MapDataset behind make_dataset (random access by step)."""
  _check_name(data_config)
  per_process = per_process_batch(global_batch_size, process_index, process_count)
  spec = procedural.ProceduralSpec.from_config(data_config)
  n = int(data_config.get("num_train_examples" if split == "train" else "num_eval_examples",
                          DEFAULT_NUM_TRAIN if split == "train" else DEFAULT_NUM_EVAL))
  if not global_batch_size <= n < 2 ** 31:
    raise ValueError(f"{split} set of {n} examples: need global_batch_size {global_batch_size} "
                     f"<= size < 2**31 (example ids are int32)")
  ds = grain.MapDataset.range(n).shuffle(seed=int(seed))
  ds = ds[process_index::process_count]
  return (ds.repeat()
          .map(ProceduralExample(spec, split, int(seed)))
          .batch(per_process, drop_remainder=True))


def make_dataset(data_config: Any, *, split: str, seed: int, global_batch_size: int,
                 process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """Infinite, shuffled, per-process batches (see module doc for keys and shapes).

  data_config: `config.data` (ml_collections ConfigDict or dict). Fields read here:
  name ('procedural'), num_train_examples (2**20), num_eval_examples (512, size of the held-out
  split when split='test'), num_threads (2), prefetch_buffer_size (4), num_workers (0: no worker
  processes), per_worker_buffer_size (2), warm_sources (False: workers build source images lazily;
  True: each worker builds all of them first, ~5 s); the generator's fields are in
  procedural.ProceduralSpec.
  """
  ds = train_map_dataset(data_config, split=split, seed=seed, global_batch_size=global_batch_size,
                         process_index=process_index, process_count=process_count)
  return maybe_mp_prefetch(ds.to_iter_dataset(read_options(data_config)), data_config, split)


def make_eval_dataset(data_config: Any, *, seed: int, global_batch_size: int,
                      process_index: int = 0, process_count: int = 1,
                      num_examples: int | None = None) -> grain.IterDataset:
  """The fixed held-out set: examples 0..N-1 of split 'test', in order, once.

  N = num_examples or data.num_eval_examples (512). Process i gets examples i, i + P, ...; the last
  batch may be short when N is not a multiple of global_batch_size, which is only allowed for one
  process (so every process runs the same number of eval steps)."""
  _check_name(data_config)
  per_process = per_process_batch(global_batch_size, process_index, process_count)
  n = int(num_examples if num_examples is not None
          else data_config.get("num_eval_examples", DEFAULT_NUM_EVAL))
  if n < 1:
    raise ValueError(f"eval set size must be >= 1, got {n}")
  if process_count > 1 and n % global_batch_size:
    raise ValueError(f"eval set size {n} must be a multiple of global_batch_size "
                     f"{global_batch_size} when process_count is {process_count}")
  spec = procedural.ProceduralSpec.from_config(data_config)
  ds = (grain.MapDataset.range(n)[process_index::process_count]
        .map(ProceduralExample(spec, "test", int(seed)))
        .batch(per_process, drop_remainder=False))
  return maybe_mp_prefetch(ds.to_iter_dataset(read_options(data_config)), data_config, "test")
