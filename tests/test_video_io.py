"""Video / image I/O (data_pipelines.video_io) and face cropping (data_pipelines.face_crop)."""

import os
import struct
import subprocess
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from data_pipelines import face_crop, video_io
from data_pipelines.video_io import VideoError


def _smooth_clip(t=6, h=32, w=48):
  """A smooth moving pattern: survives H.264 and GIF palettes well enough to compare."""
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  frames = [np.stack([0.5 + 0.3 * np.sin(6 * xx + 0.4 * k), 0.5 + 0.3 * np.cos(5 * yy + 0.3 * k),
                      0.5 + 0.2 * np.sin(3 * (xx + yy))], -1) for k in range(t)]
  return np.asarray(frames, np.float32)


def _write_png16_rgb(path, arr):
  """Minimal 16-bit RGB PNG writer (PIL cannot write these)."""
  h, w, _ = arr.shape
  raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
  png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
         + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
  path.write_bytes(png)


# ------------------------------------------------------------------------------------ video files

def test_mp4_round_trip_frames_fps_and_chunks(tmp_path):
  clip = _smooth_clip()
  path = tmp_path / "clip.mp4"
  video_io.write_video(path, clip, fps=24)
  frames, fps = video_io.read_video(path)
  assert frames.shape == clip.shape and frames.dtype == np.float32
  assert fps == pytest.approx(24.0)
  err = np.abs(frames - clip)
  assert err.mean() < 0.02 and err.max() < 0.15
  assert video_io.read_video(path, max_frames=4)[0].shape[0] == 4
  stream = video_io.iter_video(path, chunk=4)
  assert stream.fps == pytest.approx(24.0)
  assert [c.shape[0] for c in stream] == [4, 2]
  assert not [p for p in os.listdir(tmp_path) if p != "clip.mp4"]  # no temporary files left


def test_odd_sizes_are_padded_by_edge_repeat(tmp_path):
  clip = _smooth_clip(t=3, h=33, w=47)
  video_io.write_video(tmp_path / "odd.mp4", clip, fps=10)
  frames, _ = video_io.read_video(tmp_path / "odd.mp4")
  assert frames.shape == (3, 34, 48, 3)
  assert np.abs(frames[:, :33, :47] - clip).mean() < 0.02
  assert np.abs(frames[:, 33, :47] - clip[:, 32]).mean() < 0.03


def test_failed_write_keeps_existing_file(tmp_path):
  path = tmp_path / "keep.mp4"
  video_io.write_video(path, _smooth_clip(t=2), fps=5)
  before = path.read_bytes()
  bad = _smooth_clip(t=2)
  bad[0, 0, 0, 0] = np.nan
  with pytest.raises(VideoError, match="keep.mp4.*NaN"):
    video_io.write_video(path, bad, fps=5)
  with pytest.raises(VideoError, match="keep.avi.*extension"):
    video_io.write_video(tmp_path / "keep.avi", _smooth_clip(t=2), fps=5)
  with pytest.raises(VideoError, match=r"\[T, H, W, 3\]"):
    video_io.write_video(path, np.zeros((2, 8, 8, 5)), fps=5)
  assert path.read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ["keep.mp4"]
  video_io.write_video(path, _smooth_clip(t=3), fps=5)  # a good write replaces it
  assert video_io.read_video(path)[0].shape[0] == 3


def test_gif_round_trip(tmp_path):
  clip = _smooth_clip(t=4)
  video_io.write_gif(tmp_path / "a.gif", clip, fps=10)
  frames, fps = video_io.read_video(tmp_path / "a.gif")
  assert frames.shape == clip.shape and fps == pytest.approx(10.0)
  assert np.abs(frames - clip).mean() < 0.03


# ---------------------------------------------------------------------------- images and folders

def test_frame_folder_natural_order_and_pixel_formats(tmp_path):
  folder = tmp_path / "seq"
  folder.mkdir()
  for n in (1, 2, 10, 11):  # lexicographic order would put img10 before img2
    Image.fromarray(np.full((6, 8, 3), n * 10, np.uint8)).save(folder / f"img{n}.png")
  (folder / "notes.txt").write_text("ignored")
  (folder / ".hidden.png").write_bytes(b"")
  frames, fps = video_io.read_video(folder, folder_fps=30.0)
  assert fps == 30.0 and frames.shape == (4, 6, 8, 3)
  np.testing.assert_allclose(frames[:, 0, 0, 0] * 255, [10, 20, 100, 110], atol=1e-4)
  assert [c.shape[0] for c in video_io.iter_video(folder, chunk=3)] == [3, 1]

  grey = np.arange(48, dtype=np.uint8).reshape(6, 8)
  Image.fromarray(grey).save(tmp_path / "grey.png")
  np.testing.assert_allclose(video_io.read_image(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, -1) / 255.0)
  rgba = np.zeros((6, 8, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: alpha is dropped, colour kept
  Image.fromarray(rgba).save(tmp_path / "rgba.png")
  np.testing.assert_allclose(video_io.read_image(tmp_path / "rgba.png")[..., 0], 200 / 255.0)
  g16 = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000)
  Image.fromarray(g16).save(tmp_path / "g16.png")
  np.testing.assert_allclose(video_io.read_image(tmp_path / "g16.png")[..., 1], g16 / 65535.0, atol=1e-6)
  rgb16 = np.stack([g16, 65535 - g16, np.full_like(g16, 257)], -1)
  _write_png16_rgb(tmp_path / "rgb16.png", rgb16)
  np.testing.assert_allclose(video_io.read_image(tmp_path / "rgb16.png"), rgb16 / 65535.0, atol=1e-6)
  Image.fromarray(np.full((6, 8, 3), 77, np.uint8)).save(tmp_path / "x.bmp")
  np.testing.assert_allclose(video_io.read_image(tmp_path / "x.bmp"), 77 / 255.0)


def _zero_frame_video(path):
  import imageio_ffmpeg
  subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=8000",
                  "-t", "0.1", "-c:a", "aac", str(path)], check=True)


def _bad_inputs(tmp_path):
  """(path, reader, expected message fragment) for each kind of bad input."""
  good = tmp_path / "good.mp4"
  video_io.write_video(good, _smooth_clip(t=30, h=64, w=64), fps=25)
  data = good.read_bytes()
  (tmp_path / "truncated.mp4").write_bytes(data[: int(len(data) * 0.6)])
  (tmp_path / "junk.mp4").write_bytes(b"not a video" * 50)
  (tmp_path / "empty.mp4").write_bytes(b"")
  _zero_frame_video(tmp_path / "noframes.mp4")
  (tmp_path / "clip.xyz").write_bytes(b"abc")
  (tmp_path / "empty.png").write_bytes(b"")
  Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "cut.png")
  (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:60])
  (tmp_path / "nothing").mkdir()
  (tmp_path / "nothing" / "readme.txt").write_text("x")
  mixed = tmp_path / "mixed"
  mixed.mkdir()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(mixed / "0.png")
  Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(mixed / "1.png")
  read = video_io.read_video
  return [
      (tmp_path / "missing.mp4", read, "no such file"),
      (tmp_path / "empty.mp4", read, "empty file"),
      (tmp_path / "noframes.mp4", read, "no video stream"),
      (tmp_path / "junk.mp4", read, "corrupt"),
      (tmp_path / "truncated.mp4", read, "corrupt"),
      (tmp_path / "clip.xyz", read, "unsupported video extension"),
      (tmp_path / "empty.png", video_io.read_image, "empty file"),
      (tmp_path / "cut.png", video_io.read_image, "corrupt"),
      (tmp_path / "clip.xyz", video_io.read_image, "unsupported image extension"),
      (tmp_path / "nothing", read, "no images"),
      (mixed, read, "differs"),
  ]


def test_bad_inputs_raise_one_video_error_naming_the_file(tmp_path):
  for path, reader, fragment in _bad_inputs(tmp_path):
    with pytest.raises(VideoError) as info:
      reader(path)
    msg = str(info.value)
    assert path.name in msg and fragment in msg, (path, msg)
  with pytest.raises(FileNotFoundError):  # missing files are also FileNotFoundError
    video_io.read_image(tmp_path / "missing.png")


# ------------------------------------------------------------------------------------ face crops

def _astronaut():
  import skimage.data
  return skimage.data.astronaut().astype(np.float32) / 255.0


def test_detector_finds_packaged_faces():
  from matplotlib import cbook
  boxes = face_crop.detect_faces(_astronaut())
  top, left, h, w = boxes[0]  # her face spans roughly rows 60-170, columns 170-280
  assert 80 < top + h / 2 < 150 and 190 < left + w / 2 < 260 and 70 < h < 160
  hopper = video_io.read_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
  top, left, h, w = face_crop.detect_faces(hopper)[0]
  assert 150 < top + h / 2 < 300 and 200 < left + w / 2 < 320 and h > 120


def test_crop_clip_one_box_enlarged_square_and_resized():
  img = _astronaut()
  clip = np.stack([img, np.roll(img, 2, axis=1), np.roll(img, 4, axis=1)])
  out, box = face_crop.crop_clip(clip, 64)
  assert out.shape == (3, 64, 64, 3) and out.dtype == np.float32 and box.face_found
  top, left, h, w = face_crop.detect_faces(img)[0]
  assert box.size >= 1.5 * max(h, w)  # enlarged (increase 0.3 on each side)
  assert box.top <= top and box.left <= left and box.top + box.size >= top + h
  np.testing.assert_allclose(out[1], face_crop.apply_box(clip[1:2], box, 64)[0])  # same box for all
  single, box1 = face_crop.crop_image(img, 32)
  assert single.shape == (32, 32, 3) and box1.face_found


def test_square_box_clamps_inside_image():
  box = face_crop.square_box((0, 0, 40, 30), (100, 60), increase=0.3)  # face in the corner
  assert box.top == 0 and box.left == 0 and box.size <= 60
  box = face_crop.square_box((10, 10, 90, 50), (100, 60), increase=0.3)  # enlarged beyond the image
  assert box.size == 60 and 0 <= box.top <= 40 and box.left == 0


def test_no_face_falls_back_to_centre_crop_with_warning():
  flat = np.full((2, 30, 50, 3), 0.5, np.float32)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out, box = face_crop.crop_clip(flat, 16)
  assert any(issubclass(w.category, face_crop.NoFaceWarning) for w in caught)
  assert box == face_crop.CropBox(0, 10, 30, False) and out.shape == (2, 16, 16, 3)
  with pytest.raises(ValueError, match="crop_clip"):
    face_crop.crop_clip(np.zeros((0, 8, 8, 3)), 8)


def test_resize_matches_jax_antialiased_linear():
  import jax
  x = np.random.default_rng(0).random((1, 20, 15, 3)).astype(np.float32)
  for hw in ((8, 6), (32, 25)):  # down (antialiased) and up
    ref = np.asarray(jax.image.resize(x, (1, *hw, 3), "linear", antialias=True))
    np.testing.assert_allclose(face_crop.resize_frames(x, hw), ref, atol=1e-5)
