"""Malformed inputs for every entry point, made on the fly, and the driver that runs them.

Why a driver: each `python -m magplus_jax.main` pays ~5-10 s of imports on a busy 2-core machine,
so the ~40 cases run in ONE subprocess that calls the very entry the CLI calls
(`magplus_jax.main.run()`, and the converters' modules as `__main__` through runpy) with sys.argv
set, file descriptors 1 and 2 redirected per case, and SystemExit caught. Between cases absl's
flags are reset. tests/test_malformed_inputs.py checks the driver against real `python -m` runs.

  python tests/malformed_corpus.py ROOT OUT.json [CASE_ID ...]

builds the inputs under ROOT, runs the cases, and writes per case: exit status, stdout, stderr,
seconds, and what changed in the case's pre-populated work directory (changed / deleted / new).

Generation cases must fail on input validation, before any training: the driver replaces
`magplus_jax.train.train_and_evaluate` by a tripwire that ends the case with status 99.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import runpy
import shutil
import struct
import sys
import tempfile
import time
import traceback
import zlib

import numpy as np

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIPWIRE_STATUS = 99
_GEN = ("--config", os.path.join(ROOT_DIR, "configs", "generate.py"))
_TRAIN = ("--config", os.path.join(ROOT_DIR, "configs", "default.py"))
# Small, valid everything-else, so each case exercises exactly one bad input.
_SMALL = ("--config.backbone.image_size=32", "--config.generate.crop=False")
_SMALL_TRAIN = ("--config.data.image_size=32", "--config.data.num_eval_examples=8",
                "--config.model.levels=2", "--config.model.width=8", "--config.total_steps=2")


@dataclasses.dataclass(frozen=True)
class Case:
  """One malformed input. `{R}` in args is the corpus root; `{W}` the case's work directory."""
  id: str
  args: tuple
  status: int                # expected exit status (2: command line, 1: the job)
  expect: tuple              # the error line must contain all of these (case-insensitive)
  entry: str = "main"        # "main" or a converter module, e.g. "magplus_jax.ports.raft"
  needs_torch: bool = False
  xfail: str = ""            # "needs patch: ..." while the code mishandles the case


def _gen(cid, *args, expect, status=1, src="{R}/ok/source.png", drv="{R}/ok/driving", **kw):
  io = ((f"--config.source={src}",) if src else ()) + ((f"--config.driving={drv}",) if drv else ())
  return Case(cid, _GEN + ("--workdir", "{W}") + _SMALL + io + args, status, expect, **kw)


def _train(cid, *args, expect, status=1, **kw):
  return Case(cid, _TRAIN + ("--workdir", "{W}") + _SMALL_TRAIN + args, status, expect, **kw)


def _port(cid, module, *args, expect, status=1, **kw):
  return Case(cid, args, status, expect, entry=f"magplus_jax.ports.{module}", needs_torch=True,
              **kw)


_NEEDS_VALIDATE = ("needs patch: config_lib.validate must check model.norm/output, optimizer "
                   "name/schedule and flow/backbone names before the run writes config.json")
_NEEDS_FAIL_FAST = ("needs patch: generate must check a fixed alpha (repeats_for) and the given "
                    "magnifier checkpoints before it trains the missing magnifier")
_NEEDS_PORTS_CLI = ("needs patch: converter CLIs must turn input errors into one line "
                    "(ports.common.run_cli)")
_NEEDS_UNKNOWN_KEY = ("needs patch: main._message must say 'unknown config key' for keys "
                      "with no close match")
_NEEDS_BOMB = "needs patch: video_io.read_image must turn PIL's DecompressionBombError into VideoError"

CASES = (
    # ----------------------------------------------------------------- driving videos / folders
    _gen("video_empty_file", drv="{R}/video/empty.mp4", expect=("empty.mp4", "empty file")),
    _gen("video_zero_frames_audio_only", drv="{R}/video/audio_only.mp4",
         expect=("audio_only.mp4", "no video stream")),
    _gen("video_one_frame", drv="{R}/video/one_frame.mp4",
         expect=("one_frame.mp4", "1 frame", "at least 2")),
    _gen("video_truncated_mp4", drv="{R}/video/truncated.mp4",
         expect=("truncated.mp4", "truncated")),
    _gen("video_garbage_bytes_mp4", drv="{R}/video/garbage.mp4",
         expect=("garbage.mp4", "corrupt")),
    _gen("video_text_renamed_avi", drv="{R}/video/text.avi", expect=("text.avi", "corrupt")),
    _gen("video_png_renamed_mp4", drv="{R}/video/png_as.mp4",
         expect=("png_as.mp4", "1 frame")),
    _gen("video_huge_dimension_claim", drv="{R}/video/huge_claim.mp4",
         expect=("huge_claim.mp4", "no frames")),
    _gen("video_missing", drv="{R}/video/missing.mp4",
         expect=("missing.mp4", "no such file")),
    _gen("video_unsupported_extension", drv="{R}/video/clip.txt",
         expect=("clip.txt", "unsupported video extension")),
    _gen("folder_no_images", drv="{R}/folders/no_images",
         expect=("no_images", "contains no images")),
    _gen("folder_mixed_sizes", drv="{R}/folders/mixed_sizes", expect=("mixed_sizes", "differs")),
    _gen("folder_corrupt_frame", drv="{R}/folders/corrupt_frame",
         expect=("f1.png", "corrupt")),
    _gen("folder_single_frame", drv="{R}/folders/single_frame",
         expect=("single_frame", "1 frame")),
    # ---------------------------------------------------------------------------- source image
    _gen("image_empty_file", src="{R}/image/empty.png", expect=("empty.png", "empty file")),
    _gen("image_zero_size", src="{R}/image/zero_size.png", expect=("zero_size.png", "corrupt")),
    _gen("image_corrupt_png", src="{R}/image/corrupt.png", expect=("corrupt.png", "corrupt")),
    _gen("image_text_renamed_jpg", src="{R}/image/text.jpg", expect=("text.jpg", "corrupt")),
    _gen("image_missing", src="{R}/image/missing.png", expect=("missing.png", "no such file")),
    _gen("image_is_directory", src="{R}/image", expect=("image", "is a directory")),
    _gen("image_unsupported_extension", src="{R}/image/anim.gif",
         expect=("anim.gif", "unsupported image extension")),
    _gen("image_huge_dimension_claim", src="{R}/image/huge_claim.png",
         expect=("huge_claim.png", "too large")),
    _gen("source_without_driving", drv="", expect=("--config.source", "--config.driving")),
    # --------------------------------------------------------------------------------- configs
    _gen("config_unknown_key", "--config.no_such_key=1", status=2,
         expect=("unknown config key", "no_such_key")),
    _gen("config_unknown_key_close_match", "--config.generate.alpah=2", status=2,
         expect=("unknown config key", "alpah", "alpha")),
    _gen("config_wrong_type_float", "--config.generate.alpha=abc", status=2,
         expect=("--config.generate.alpha=abc", "float")),
    _gen("config_wrong_type_int", "--config.model.width=1.5", status=2,
         expect=("--config.model.width=1.5", "int")),
    Case("config_file_missing", ("--config", "{R}/no_such_config.py", "--workdir", "{W}"), 2,
         ("no_such_config.py",)),
    Case("config_bad_task_arg", ("--config", _TRAIN[1] + ":bogus", "--workdir", "{W}"), 2,
         ("bogus", "magplus")),
    Case("config_missing_workdir", _GEN, 2, ("--workdir", "required")),
    _gen("alpha_negative", "--config.generate.alpha=-1",
         expect=("config.generate.alpha=-1", "> 0")),
    _gen("alpha_zero_point_zero_nan", "--config.generate.alpha=nan",
         expect=("config.generate.alpha=nan", "finite")),
    _gen("alpha_infinite", "--config.generate.alpha=inf",
         expect=("config.generate.alpha=inf", "finite")),
    _gen("alpha_beyond_max_repeats", "--config.generate.alpha=1000",
         expect=("alpha=1000", "max_repeats")),
    _gen("alpha_max_not_above_one", "--config.data.alpha_max=1",
         expect=("config.data.alpha_max=1", "> 1")),
    _gen("alpha_max_nan", "--config.data.alpha_max=nan",
         expect=("config.data.alpha_max=nan", "finite")),
    _gen("mode_bogus", "--config.mode=bogus", expect=("config.mode='bogus'", "choose")),
    _gen("flow_name_bogus", "--config.flow.name=bogus",
         expect=("config.flow.name='bogus'", "pyramid_lk")),
    _gen("backbone_name_bogus", "--config.backbone.name=bogus",
         expect=("config.backbone.name='bogus'", "fomm")),
    _gen("norm_bogus_generate", "--config.model.norm=bogus",
         expect=("config.model.norm='bogus'", "group")),
    _train("norm_bogus_train", "--config.model.norm=bogus",
           expect=("config.model.norm='bogus'", "group")),
    _train("optimizer_bogus_train", "--config.optimizer.name=bogus",
           expect=("config.optimizer.name='bogus'", "adam")),
    _train("total_steps_zero_train", "--config.total_steps=0",
           expect=("config.total_steps=0", "> 0")),
    _train("image_size_not_divisible_train", "--config.data.image_size=33",
           expect=("config.data.image_size=33", "divisible")),
    # ----------------------------------------------------------------------------- checkpoints
    _gen("backbone_fomm_without_checkpoint", "--config.backbone.name=fomm",
         expect=("config.backbone.checkpoint", "empty")),
    _gen("backbone_fomm_given_raft_dir", "--config.backbone.name=fomm",
         "--config.backbone.checkpoint={R}/ckpt/raft_converted",
         expect=("raft_converted", "'raft'", "fomm")),
    _gen("backbone_fomm_garbage_dir", "--config.backbone.name=fomm",
         "--config.backbone.checkpoint={R}/ckpt/garbage",
         expect=("garbage", "not a magplus_jax checkpoint")),
    _gen("backbone_fomm_corrupt_meta", "--config.backbone.name=fomm",
         "--config.backbone.checkpoint={R}/ckpt/corrupt_meta", expect=("corrupt_meta", "corrupt")),
    _gen("backbone_fomm_missing_dir", "--config.backbone.name=fomm",
         "--config.backbone.checkpoint={R}/ckpt/missing", expect=("missing", "does not exist")),
    _gen("flow_raft_given_fomm_dir", "--config.flow.name=raft",
         "--config.flow.checkpoint={R}/ckpt/fomm_converted",
         expect=("fomm_converted", "'fomm'", "raft")),
    _gen("magnifier_checkpoint_missing_dir", "--config.generate.alpha=2",
         "--config.generate.magplus_checkpoint={R}/ckpt/missing",
         "--config.generate.demag_checkpoint={R}/ckpt/missing",
         expect=("missing", "does not exist")),
    _gen("magnifier_checkpoint_garbage_dir", "--config.generate.alpha=2",
         "--config.generate.magplus_checkpoint={R}/ckpt/garbage",
         "--config.generate.demag_checkpoint={R}/ckpt/garbage",
         expect=("garbage", "could not be read")),
    _gen("magnifier_checkpoint_other_architecture", "--config.generate.alpha=2",
         "--config.generate.magplus_checkpoint={R}/ckpt/other_arch",
         "--config.generate.demag_checkpoint={R}/ckpt/other_arch",
         expect=("other_arch", "another architecture")),
    _gen("magnifier_checkpoint_is_raft_dir_demag_missing",
         "--config.generate.magplus_checkpoint={R}/ckpt/raft_converted",
         expect=("raft_converted", "no training checkpoint")),
    # ------------------------------------------------------------------------------ converters
    _port("raft_converter_not_torch", "raft", "{R}/torch/not_torch.pth", "{W}/out",
          expect=("not_torch.pth", "not a readable pytorch file")),
    _port("raft_converter_fomm_state_dict", "raft", "{R}/torch/fomm_like.pth", "{W}/out",
          expect=("raft", "missing keys", "unexpected keys")),
    _port("raft_converter_missing_file", "raft", "{R}/torch/missing.pth", "{W}/out",
          expect=("missing.pth", "no such file")),
    _port("raft_converter_out_dir_exists", "raft", "{R}/torch/raft_small.pth", "{W}",
          expect=("already exists",)),
    _port("fomm_converter_not_torch", "fomm", "{R}/torch/not_torch.pth", "{W}/out",
          expect=("not_torch.pth", "not a readable pytorch file")),
    _port("fomm_converter_raft_state_dict", "fomm", "{R}/torch/raft_like.pth", "{W}/out",
          expect=("fomm", "generator", "kp_detector")),
)


# ================================================================================ building inputs
def png_bytes(arr: np.ndarray, width: int | None = None, height: int | None = None,
              data: bytes | None = None) -> bytes:
  """A PNG of arr ([H, W] or [H, W, C], uint8 or uint16); width/height/data override the truth."""
  arr = np.asarray(arr)
  if arr.ndim == 2:
    arr = arr[..., None]
  h, w, c = arr.shape
  depth = 16 if arr.dtype == np.uint16 else 8
  ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
  rows = arr.astype(">u2" if depth == 16 else np.uint8).reshape(h, -1)
  raw = b"".join(b"\x00" + r.tobytes() for r in rows)

  def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
  ihdr = struct.pack(">IIBBBBB", w if width is None else width, h if height is None else height,
                     depth, ctype, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
          + chunk(b"IDAT", zlib.compress(raw) if data is None else data) + chunk(b"IEND", b""))


def _write(path, data: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def _texture(rng, h, w):
  """A smooth random RGB texture (uint8): something flow can track."""
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  img = [0.5 + 0.4 * np.sin(2 * np.pi * (rng.uniform(1, 3) * xx + rng.uniform(1, 3) * yy)
                            + rng.uniform(0, 6)) for _ in range(3)]
  return (np.stack(img, -1) * 255).astype(np.uint8)


def build_inputs(root: str) -> None:
  """Writes every file the cases name under root (a few hundred kB in all)."""
  from data_pipelines import video_io  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  tex = _texture(rng, 32, 32)
  j = lambda *p: os.path.join(root, *p)
  # valid inputs used by the cases that break something else
  _write(j("ok", "source.png"), png_bytes(tex))
  for i in range(3):
    _write(j("ok", "driving", f"frame{i}.png"), png_bytes(np.roll(tex, i, axis=1)))
  clip = np.stack([np.roll(tex, i, axis=1) for i in range(10)]).astype(np.float32) / 255
  video_io.write_video(j("ok", "clip.mp4"), clip, 25.0)
  # videos
  _write(j("video", "empty.mp4"), b"")
  video_io.write_video(j("video", "one_frame.mp4"), clip[:1], 25.0)
  with open(j("ok", "clip.mp4"), "rb") as f:
    good = f.read()
  _write(j("video", "truncated.mp4"), good[:int(len(good) * 0.6)])
  _write(j("video", "garbage.mp4"), rng.bytes(4096))
  _write(j("video", "text.avi"), b"this is a text file, not a video\n" * 20)
  _write(j("video", "png_as.mp4"), png_bytes(tex))
  _write(j("video", "huge_claim.mp4"), b"YUV4MPEG2 W8192 H8192 F25:1 Ip A1:1 C420jpeg\nFRAME\n"
         + rng.bytes(1000))
  _write(j("video", "clip.txt"), b"frame list\n")
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                  "anullsrc=r=8000:cl=mono", "-t", "0.2", "-c:a", "aac",
                  j("video", "audio_only.mp4")], check=True, capture_output=True)
  # frame folders
  _write(j("folders", "no_images", "notes.txt"), b"no frames here\n")
  _write(j("folders", "mixed_sizes", "f0.png"), png_bytes(tex))
  _write(j("folders", "mixed_sizes", "f1.png"), png_bytes(_texture(rng, 40, 40)))
  _write(j("folders", "corrupt_frame", "f0.png"), png_bytes(tex))
  _write(j("folders", "corrupt_frame", "f1.png"), png_bytes(tex)[:60])
  _write(j("folders", "corrupt_frame", "f2.png"), png_bytes(tex))
  _write(j("folders", "single_frame", "f0.png"), png_bytes(tex))
  # source images
  _write(j("image", "empty.png"), b"")
  _write(j("image", "zero_size.png"), png_bytes(np.zeros((1, 1, 3), np.uint8), width=0, height=0))
  _write(j("image", "corrupt.png"), png_bytes(tex)[:100])
  _write(j("image", "text.jpg"), b"not a jpeg\n")
  _write(j("image", "anim.gif"), b"GIF89a")
  _write(j("image", "huge_claim.png"), png_bytes(tex, width=100000, height=100000))
  # checkpoints
  from magplus_jax import checkpointing  # pylint: disable=g-import-not-at-top
  checkpointing.save_pretrained(j("ckpt", "raft_converted"), {"w": np.zeros((2,), np.float32)},
                                model="raft", config={"small": False})
  checkpointing.save_pretrained(j("ckpt", "fomm_converted"), {"w": np.zeros((2,), np.float32)},
                                model="fomm", config={})
  _write(j("ckpt", "garbage", "params"), rng.bytes(256))
  _write(j("ckpt", "garbage", "0", "junk.bin"), rng.bytes(256))
  _write(j("ckpt", "corrupt_meta", "magplus_meta.json"), b"{not json")
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  mngr = ocp.CheckpointManager(j("ckpt", "other_arch", "checkpoints"))
  state = {"params": {"dense": {"kernel": np.ones((3, 4), np.float32)}},
           "model_state": {"count": np.zeros((1,), np.int32)}}
  mngr.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  mngr.wait_until_finished()
  mngr.close()
  # torch files (only when torch is installed: the converter cases need it anyway)
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  _write(j("torch", "not_torch.pth"), b"definitely not a pickle\n")
  torch.save({"generator": {"first.conv.weight": torch.zeros(8, 3, 7, 7)},
              "kp_detector": {"predictor.encoder.down_blocks.0.conv.weight": torch.zeros(4, 3, 3, 3)}},
             j("torch", "fomm_like.pth"))
  torch.save({"module.fnet.conv1.weight": torch.zeros(64, 3, 7, 7),
              "module.update_block.gru.convz1.weight": torch.zeros(128, 384, 1, 5)},
             j("torch", "raft_like.pth"))
  from magplus_jax.ports import raft  # pylint: disable=g-import-not-at-top
  torch.save({f"module.{k}": torch.zeros(v) for k, v in raft.torch_spec(small=True).items()},
             j("torch", "raft_small.pth"))


def populate_workdir(path: str, root: str) -> None:
  """What an earlier run left: results, a config, a checkpoint and a sentinel (all must survive)."""
  os.makedirs(os.path.join(path, "checkpoints", "7"), exist_ok=True)
  shutil.copy(os.path.join(root, "ok", "clip.mp4"), os.path.join(path, "result.mp4"))
  _write(os.path.join(path, "sentinel.txt"), b"earlier contents\n")
  _write(os.path.join(path, "config.json"), b'{"earlier": "run"}\n')
  _write(os.path.join(path, "generate.json"), b'{"alpha": 3.0}\n')
  _write(os.path.join(path, "checkpoints", "7", "marker.bin"), bytes(range(256)))


def snapshot(path: str) -> dict:
  out = {}
  for d, _, files in os.walk(path):
    for f in files:
      p = os.path.join(d, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
  return out


# ========================================================================================= driver
def _expand(args, root, workdir):
  return [a.replace("{R}", root).replace("{W}", workdir) for a in args]


class _Captured:
  """Redirects file descriptors 1 and 2 (Python and C level) to temporary files."""

  def __enter__(self):
    sys.stdout.flush()
    sys.stderr.flush()
    self.files = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    self.saved = [os.dup(1), os.dup(2)]
    os.dup2(self.files[0].fileno(), 1)
    os.dup2(self.files[1].fileno(), 2)
    return self

  def __exit__(self, *exc):
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, saved in zip((1, 2), self.saved):
      os.dup2(saved, fd)
      os.close(saved)
    self.out, self.err = [(f.seek(0), f.read().decode(errors="replace"))[1] for f in self.files]
    for f in self.files:
      f.close()
    return False


_ORIGINAL = {}


def _tripwire(*args, **kwargs):
  del args, kwargs
  print("DRIVER: training started before the inputs were validated", file=sys.stderr)
  raise SystemExit(TRIPWIRE_STATUS)


def _run_one(case: Case, root: str, workdir: str) -> int:
  argv = _expand(case.args, root, workdir)
  if case.entry == "main":
    from absl import app, flags  # pylint: disable=g-import-not-at-top
    from magplus_jax import main, train  # pylint: disable=g-import-not-at-top
    _ORIGINAL.setdefault("train", train.train_and_evaluate)
    generating = _GEN[1] in argv
    train.train_and_evaluate = _tripwire if generating else _ORIGINAL["train"]
    flags.FLAGS.unparse_flags()
    for name in list(flags.FLAGS):  # config_flags defines one flag per override it sees
      if name.startswith("config."):
        delattr(flags.FLAGS, name)
    # absl allows one app.run per process; the CLI runs it once, so allow it again per case.
    app._register_and_parse_flags_with_usage.done = False  # pylint: disable=protected-access
    sys.argv = ["magplus_jax.main"] + argv
    main.run()
    return 0
  sys.argv = [case.entry] + argv
  sys.modules.pop(case.entry, None)
  runpy.run_module(case.entry, run_name="__main__", alter_sys=True)
  return 0


def run_cases(root: str, case_ids=None) -> dict:
  cases = [c for c in CASES if not case_ids or c.id in case_ids]
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    have_torch = True
  except ImportError:
    have_torch = False
  results = {}
  for case in cases:
    if case.needs_torch and not have_torch:
      results[case.id] = {"skipped": "torch is not installed"}
      continue
    workdir = os.path.join(root, "work", case.id)
    populate_workdir(workdir, root)
    before = snapshot(workdir)
    t0 = time.time()
    with _Captured() as cap:
      try:
        status = _run_one(case, root, workdir)
      except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      except BaseException:  # pylint: disable=broad-except  # what the interpreter would print
        traceback.print_exc()
        status = 1
    after = snapshot(workdir)
    results[case.id] = {
        "status": status, "stdout": cap.out, "stderr": cap.err, "seconds": time.time() - t0,
        "changed": sorted(k for k in before if k in after and after[k] != before[k]),
        "deleted": sorted(k for k in before if k not in after),
        "new": sorted(k for k in after if k not in before)}
  return results


def main(argv):
  sys.path.insert(0, ROOT_DIR)  # this checkout's packages, as `python -m` from ROOT_DIR sees them
  if argv[0] == "--build":
    build_inputs(argv[1])
    return
  root, out, *ids = argv
  os.makedirs(root, exist_ok=True)
  # Built in a child process: building initialises JAX (orbax), and a later fork of ffmpeg would
  # then print JAX's os.fork() warning, which a fresh CLI process failing on its input never does.
  import subprocess  # pylint: disable=g-import-not-at-top
  subprocess.run([sys.executable, os.path.abspath(__file__), "--build", root], check=True)
  import warnings  # pylint: disable=g-import-not-at-top
  warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")  # same reason, later cases
  results = run_cases(root, set(ids))
  with open(out, "w") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1:])
