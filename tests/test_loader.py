"""grain pipelines: batch format, exact resume from an orbax checkpoint, disjoint processes."""
import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from data_pipelines import loader


def _cfg(**kw):
  base = dict(image_size=16, supersample=2, num_train_examples=64, num_eval_examples=12,
              num_threads=1, prefetch_buffer_size=2)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_batch_format():
  it = iter(loader.make_dataset(_cfg(), split="train", seed=0, global_batch_size=4))
  b = next(it)
  assert set(b) == {"ref", "frame", "magnified", "flow", "alpha", "amplitude", "index"}
  for k in ("ref", "frame", "magnified"):
    assert b[k].shape == (4, 16, 16, 3) and b[k].dtype == np.float32
  assert b["flow"].shape == (4, 16, 16, 2) and b["flow"].dtype == np.float32
  assert b["alpha"].shape == (4,) and b["alpha"].dtype == np.float32
  assert b["index"].shape == (4,) and b["index"].dtype == np.int32


def test_same_seed_same_batches_and_epochs_reshuffle():
  cfg = _cfg(num_train_examples=8)
  a = iter(loader.make_dataset(cfg, split="train", seed=1, global_batch_size=4))
  b = iter(loader.make_dataset(cfg, split="train", seed=1, global_batch_size=4))
  ia = [next(a)["index"] for _ in range(4)]
  ib = [next(b)["index"] for _ in range(4)]
  np.testing.assert_array_equal(np.stack(ia), np.stack(ib))
  assert sorted(np.concatenate(ia[:2])) == list(range(8))     # one epoch covers the set
  assert not np.array_equal(np.concatenate(ia[:2]), np.concatenate(ia[2:]))  # reshuffled


def test_checkpoint_restore_resumes_exactly(tmp_path):
  cfg = _cfg()
  it = iter(loader.make_dataset(cfg, split="train", seed=3, global_batch_size=4))
  for _ in range(3):
    next(it)
  mngr = ocp.CheckpointManager(tmp_path / "ckpt")
  mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  want = [next(it) for _ in range(3)]
  fresh = iter(loader.make_dataset(cfg, split="train", seed=3, global_batch_size=4))
  mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  got = [next(fresh) for _ in range(3)]
  for w, g in zip(want, got):
    for k in w:
      np.testing.assert_array_equal(w[k], g[k])
  mngr.close()


def test_two_processes_see_disjoint_examples():
  cfg = _cfg(num_train_examples=32)
  seen = []
  for p in range(2):
    it = iter(loader.make_dataset(cfg, split="train", seed=4, global_batch_size=8,
                                  process_index=p, process_count=2))
    idx = np.concatenate([next(it)["index"] for _ in range(4)])   # one epoch: 16 per process
    assert len(idx) == 16 and len(set(idx)) == 16
    seen.append(set(idx.tolist()))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(32))


def test_batch_not_divisible_by_processes():
  with pytest.raises(ValueError, match=r"global_batch_size 6.*process_count 4"):
    loader.make_dataset(_cfg(), split="train", seed=0, global_batch_size=6, process_count=4)
  with pytest.raises(ValueError, match=r"process_count 4"):
    loader.make_eval_dataset(_cfg(), seed=0, global_batch_size=6, process_count=4)


def test_eval_set_fixed_order_once():
  cfg = _cfg()
  a = [b["index"] for b in loader.make_eval_dataset(cfg, seed=0, global_batch_size=5)]
  b = [b["index"] for b in loader.make_eval_dataset(cfg, seed=0, global_batch_size=5)]
  assert [len(x) for x in a] == [5, 5, 2]
  np.testing.assert_array_equal(np.concatenate(a), np.arange(12))
  np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
  ex = next(iter(loader.make_eval_dataset(cfg, seed=0, global_batch_size=4)))
  tr = next(iter(loader.make_dataset(cfg, split="train", seed=0, global_batch_size=4)))
  assert not np.isin(ex["ref"][0], tr["ref"]).all()


@pytest.mark.slow
def test_worker_processes_checkpoint(tmp_path):
  """mp_prefetch with one worker process: same batches as in-process, and resumable."""
  cfg = _cfg(num_workers=1)
  it = iter(loader.make_dataset(cfg, split="train", seed=5, global_batch_size=4))
  ref_it = iter(loader.make_dataset(_cfg(), split="train", seed=5, global_batch_size=4))
  for _ in range(2):
    np.testing.assert_array_equal(next(it)["ref"], next(ref_it)["ref"])
  mngr = ocp.CheckpointManager(tmp_path / "ckpt")
  mngr.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  want = next(ref_it)["index"]
  fresh = iter(loader.make_dataset(cfg, split="train", seed=5, global_batch_size=4))
  mngr.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  np.testing.assert_array_equal(next(fresh)["index"], want)
  mngr.close()
