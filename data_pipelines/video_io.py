"""The project's one video and image reader/writer (NumPy side, outside JAX).

Every frame that enters the project passes through here so that colour handling is decided
once: frames are float32 RGB in [0, 1], shaped `[T, H, W, 3]` (images `[H, W, 3]`).

Decisions (kept in one place so that data sets, demos and tests agree):
- Grey images become RGB by repeating the channel. An alpha channel is DROPPED (not composited),
  as PIL's `convert("RGB")` and FOMM's loader (`video[..., :3]`) do: the colour values of
  transparent pixels are kept as they are.
- 8-bit data is divided by 255, 16-bit data by 65535 (16-bit grey PNG through PIL, 16-bit RGB(A)
  PNG through ffmpeg's rgb48 decoder because PIL cannot hold it, 16-bit TIFF through tifffile).
  Video files are decoded by ffmpeg to 8-bit rgb24 whatever their bit depth.
- Frame folders are sorted naturally (`img2` before `img10`); files that are not images, and
  hidden files, are ignored. A folder carries no frame rate: `read_video` returns `folder_fps`.
- Video files are decoded by the ffmpeg binary that imageio-ffmpeg ships, with `-xerror`, so a
  truncated or corrupt stream is an error rather than a silently shorter clip.
- Writing is atomic: data goes to a temporary file in the destination folder that replaces the
  target only once complete, so a failed write never damages an existing file.
- `write_video` writes H.264 (yuv420p), which needs even sizes: an odd height/width is padded by
  repeating the last row/column (one pixel, no resampling), so the file may be one pixel larger.
- `write_gif` quantises each frame to a 256-colour palette; GIF stores frame durations in 1/100 s,
  so the frame rate read back is the nearest representable one.
Every problem with an input raises `VideoError` naming the file and the problem.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm")
GIF_EXTENSIONS = (".gif",)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
WRITE_VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".m4v")


class VideoError(ValueError):
  """A video, image or frame folder that cannot be read or written as asked."""


class VideoFileNotFoundError(VideoError, FileNotFoundError):
  """The path does not exist (a VideoError, and a FileNotFoundError for generic handlers)."""


def natural_key(name: str) -> tuple:
  """Sort key for which 'img2' < 'img10': digit runs compare as numbers."""
  return tuple(int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name))


def _check_exists(path: Path) -> None:
  if not path.exists():
    raise VideoFileNotFoundError(f"{path}: no such file or directory")


def _to_rgb_float(arr: np.ndarray, what: str) -> np.ndarray:
  """uint8/uint16/float arrays, grey or RGB(A), to float32 RGB in [0, 1]."""
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
    raise VideoError(f"{what}: unsupported pixel layout, array shape {arr.shape}")
  if arr.shape[0] == 0 or arr.shape[1] == 0:
    raise VideoError(f"{what}: zero-size image ({arr.shape[1]}x{arr.shape[0]})")
  if arr.shape[-1] in (2, 4):  # grey+alpha or RGBA: drop alpha (module docstring)
    arr = arr[..., :-1]
  if arr.dtype == np.uint8:
    out = arr.astype(np.float32) / 255.0
  elif arr.dtype == np.uint16:
    out = arr.astype(np.float32) / 65535.0
  elif arr.dtype in (np.int32, np.uint32, np.int64):
    # PIL mode "I" comes from 16-bit grey sources: interpret on the 16-bit scale.
    out = np.clip(arr.astype(np.float32) / 65535.0, 0.0, 1.0)
  elif np.issubdtype(arr.dtype, np.floating):
    out = arr.astype(np.float32)
    if not np.all(np.isfinite(out)):
      raise VideoError(f"{what}: float image contains NaN or infinite values")
    out = np.clip(out, 0.0, 1.0)
  elif arr.dtype == bool:
    out = arr.astype(np.float32)
  else:
    raise VideoError(f"{what}: unsupported pixel type {arr.dtype}")
  if out.shape[-1] == 1:
    out = np.repeat(out, 3, axis=-1)
  return np.ascontiguousarray(out)


def _png_is_16bit_colour(path: Path) -> bool:
  """True for PNGs that PIL would silently reduce to 8 bits (16-bit RGB / RGBA)."""
  with open(path, "rb") as f:
    head = f.read(26)
  return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] in (2, 6)


def _read_png48(path: Path) -> np.ndarray:
  """Decodes a 16-bit colour PNG with ffmpeg (rgb48le), keeping all 16 bits."""
  from PIL import Image
  try:
    with Image.open(path) as im:
      width, height = im.size
  except Image.DecompressionBombError as e:
    raise VideoError(f"{path}: image too large ({e})") from e
  out = _run_ffmpeg_image(path, "rgb48le")
  expected = width * height * 6
  if len(out) != expected:
    raise VideoError(f"{path}: could not decode 16-bit PNG (got {len(out)} bytes, expected {expected})")
  return np.frombuffer(out, dtype="<u2").reshape(height, width, 3)


def _ffmpeg_errors(text: str) -> str:
  """The lines of an ffmpeg log that say what went wrong (not its banner)."""
  keys = ("rror", "nvalid", "not found", "moov", "corrupt", "runcat", "missing")
  lines = [ln.strip() for ln in text.splitlines() if any(k in ln for k in keys)]
  return " | ".join(lines[-3:]) if lines else text.strip()[-300:]


def _run_ffmpeg_image(path: Path, pix_fmt: str) -> bytes:
  import imageio_ffmpeg
  cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-xerror", "-i", str(path),
         "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", pix_fmt, "-"]
  proc = subprocess.run(cmd, capture_output=True)
  if proc.returncode != 0:
    raise VideoError(f"{path}: unreadable image ({_ffmpeg_errors(proc.stderr.decode(errors='replace'))})")
  return proc.stdout


def read_image(path: str | os.PathLike) -> np.ndarray:
  """Reads one image file -> [H, W, 3] float32 RGB in [0, 1] (conventions: module docstring)."""
  path = Path(path)
  _check_exists(path)
  if path.is_dir():
    raise VideoError(f"{path}: is a directory, not an image file")
  ext = path.suffix.lower()
  if ext not in IMAGE_EXTENSIONS:
    raise VideoError(f"{path}: unsupported image extension '{ext}' (supported: {', '.join(IMAGE_EXTENSIONS)})")
  if path.stat().st_size == 0:
    raise VideoError(f"{path}: empty file (0 bytes)")
  if ext in (".tif", ".tiff"):
    import tifffile
    try:
      arr = tifffile.imread(path)
    except Exception as e:  # tifffile raises many types for bad files
      raise VideoError(f"{path}: unreadable TIFF ({e})") from e
    return _to_rgb_float(np.asarray(arr), str(path))
  if ext == ".png" and _png_is_16bit_colour(path):
    return _to_rgb_float(_read_png48(path), str(path))
  from PIL import Image
  try:
    with Image.open(path) as im:
      im.load()  # forces decoding, so truncated data fails here
      if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if ("transparency" in im.info or im.mode == "PA") else "RGB")
      elif im.mode == "1":
        im = im.convert("L")
      elif im.mode not in ("L", "LA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L", "F"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV ...
      arr = np.asarray(im)
  except Image.DecompressionBombError as e:  # not an OSError: PIL's guard against huge claims
    raise VideoError(f"{path}: image too large ({e})") from e
  except (OSError, SyntaxError, ValueError) as e:
    raise VideoError(f"{path}: unreadable or corrupt image ({e})") from e
  if arr.dtype.byteorder == ">":
    arr = arr.astype(arr.dtype.newbyteorder("<"))
  return _to_rgb_float(arr, str(path))


def list_frame_files(folder: str | os.PathLike) -> list[Path]:
  """Image files of a frame folder in natural order (raises VideoError if there are none)."""
  folder = Path(folder)
  _check_exists(folder)
  if not folder.is_dir():
    raise VideoError(f"{folder}: not a directory")
  files = [p for p in folder.iterdir()
           if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS]
  if not files:
    raise VideoError(f"{folder}: frame folder contains no images ({', '.join(IMAGE_EXTENSIONS)})")
  return sorted(files, key=lambda p: natural_key(p.name))


def read_frames(files: Sequence[str | os.PathLike]) -> np.ndarray:
  """Reads the listed image files as one clip [T, H, W, 3]; all must share one size."""
  frames = []
  for f in files:
    img = read_image(f)
    if frames and img.shape != frames[0].shape:
      raise VideoError(f"{f}: frame size {img.shape[1]}x{img.shape[0]} differs from "
                       f"{frames[0].shape[1]}x{frames[0].shape[0]} of {files[0]}")
    frames.append(img)
  if not frames:
    raise VideoError("read_frames: no files given")
  return np.stack(frames)


class VideoStream:
  """Chunked reading of a video file, GIF or frame folder, with its frame rate known up front.

  Iterating yields float32 arrays [t, H, W, 3] with t <= chunk; memory stays bounded by one chunk,
  which is what long videos (VoxCeleb, MEAD) need when they are cut into clips.
  """

  def __init__(self, path: str | os.PathLike, chunk: int = 64, max_frames: int | None = None,
               folder_fps: float = 25.0):
    self.path = Path(path)
    if chunk < 1:
      raise ValueError(f"chunk must be >= 1, got {chunk}")
    if max_frames is not None and max_frames < 1:
      raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    self.chunk, self.max_frames = chunk, max_frames
    _check_exists(self.path)
    if self.path.is_dir():
      self.kind = "folder"
      self._files = list_frame_files(self.path)
      if max_frames is not None:
        self._files = self._files[:max_frames]
      self.fps = float(folder_fps)
      return
    ext = self.path.suffix.lower()
    if ext in GIF_EXTENSIONS:
      self.kind = "gif"
    elif ext in VIDEO_EXTENSIONS:
      self.kind = "video"
    else:
      raise VideoError(f"{self.path}: unsupported video extension '{ext}' "
                       f"(supported: {', '.join(VIDEO_EXTENSIONS + GIF_EXTENSIONS)} or a frame folder)")
    if self.path.stat().st_size == 0:
      raise VideoError(f"{self.path}: empty file (0 bytes)")
    if self.kind == "gif":
      self.fps = self._gif_fps()
    else:
      self.fps, self.size = self._probe()

  # -- probing --------------------------------------------------------------------------------
  def _probe(self) -> tuple[float, tuple[int, int]]:
    import imageio_ffmpeg
    gen = imageio_ffmpeg.read_frames(str(self.path))
    try:
      meta = next(gen)
    except Exception as e:
      text = str(e)
      if "Input #0" in text and "Video:" not in text:
        raise VideoError(f"{self.path}: contains no video stream (0 frames)") from e
      raise VideoError(f"{self.path}: unreadable or corrupt video ({_ffmpeg_errors(text)})") from e
    finally:
      gen.close()
    fps, size = meta.get("fps"), meta.get("size")
    if not size or size[0] <= 0 or size[1] <= 0:
      raise VideoError(f"{self.path}: no video stream found")
    if not fps or not np.isfinite(fps) or fps <= 0:
      raise VideoError(f"{self.path}: video has no valid frame rate ({fps})")
    return float(fps), (int(size[0]), int(size[1]))

  def _gif_fps(self) -> float:
    from PIL import Image
    try:
      with Image.open(self.path) as im:
        duration_ms = im.info.get("duration", 100) or 100
    except (OSError, SyntaxError) as e:
      raise VideoError(f"{self.path}: unreadable GIF ({e})") from e
    return 1000.0 / float(duration_ms)

  # -- iteration ------------------------------------------------------------------------------
  def __iter__(self) -> Iterator[np.ndarray]:
    produced = 0
    for chunk in {"folder": self._iter_folder, "gif": self._iter_gif, "video": self._iter_video}[self.kind]():
      produced += len(chunk)
      yield chunk
    if produced == 0:
      raise VideoError(f"{self.path}: contains no frames")

  def _iter_folder(self) -> Iterator[np.ndarray]:
    first = None
    for i in range(0, len(self._files), self.chunk):
      files = self._files[i:i + self.chunk]
      frames = read_frames(files)
      if first is None:
        first = (frames.shape, files[0])
      elif frames.shape[1:] != first[0][1:]:
        raise VideoError(f"{files[0]}: frame size {frames.shape[2]}x{frames.shape[1]} differs from "
                         f"{first[0][2]}x{first[0][1]} of {first[1]}")
      yield frames

  def _iter_gif(self) -> Iterator[np.ndarray]:
    from PIL import Image, ImageSequence
    buf = []
    try:
      with Image.open(self.path) as im:
        for n, frame in enumerate(ImageSequence.Iterator(im)):
          if self.max_frames is not None and n >= self.max_frames:
            break
          buf.append(_to_rgb_float(np.asarray(frame.convert("RGB")), str(self.path)))
          if len(buf) == self.chunk:
            yield np.stack(buf)
            buf = []
    except (OSError, SyntaxError) as e:
      raise VideoError(f"{self.path}: unreadable or corrupt GIF ({e})") from e
    if buf:
      yield np.stack(buf)

  def _iter_video(self) -> Iterator[np.ndarray]:
    import imageio_ffmpeg
    width, height = self.size
    frame_bytes = width * height * 3
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-xerror", "-i", str(self.path)]
    if self.max_frames is not None:
      cmd += ["-frames:v", str(self.max_frames)]
    cmd += ["-an", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    with tempfile.TemporaryFile() as err:  # a file, so a chatty stderr can never block the pipe
      proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
      finished = False
      try:
        buf = []
        while True:
          data = proc.stdout.read(frame_bytes)
          if not data:
            break
          if len(data) < frame_bytes:
            raise VideoError(f"{self.path}: truncated video (last frame incomplete)")
          buf.append(np.frombuffer(data, np.uint8).reshape(height, width, 3))
          if len(buf) == self.chunk:
            yield np.stack(buf).astype(np.float32) / 255.0
            buf = []
        rc = proc.wait()
        finished = True
        if rc != 0:
          err.seek(0)
          msg = err.read().decode(errors="replace").strip()
          raise VideoError(f"{self.path}: unreadable, corrupt or truncated video ({_ffmpeg_errors(msg)})")
        if buf:
          yield np.stack(buf).astype(np.float32) / 255.0
      finally:
        if not finished and proc.poll() is None:
          proc.kill()
          proc.wait()
        proc.stdout.close()


def iter_video(path: str | os.PathLike, chunk: int = 64, max_frames: int | None = None,
               folder_fps: float = 25.0) -> VideoStream:
  """Streams a video file / GIF / frame folder in chunks [<=chunk, H, W, 3]; `.fps` is known at once."""
  return VideoStream(path, chunk=chunk, max_frames=max_frames, folder_fps=folder_fps)


def read_video(path: str | os.PathLike, max_frames: int | None = None,
               folder_fps: float = 25.0) -> tuple[np.ndarray, float]:
  """Reads a whole video file / GIF / frame folder -> (frames [T, H, W, 3] float32, fps)."""
  stream = iter_video(path, chunk=256, max_frames=max_frames, folder_fps=folder_fps)
  frames = np.concatenate(list(stream), axis=0)
  return frames, stream.fps


# -- writing ------------------------------------------------------------------------------------

def to_uint8(frames: np.ndarray, what: str = "frames") -> np.ndarray:
  """Float [0, 1] (clipped) or uint8 frames -> uint8, grey -> RGB; NaN/inf are an error."""
  arr = np.asarray(frames)
  if arr.dtype == np.uint8:
    out = arr
  elif np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
      raise VideoError(f"{what}: contain NaN or infinite values")
    out = np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
  else:
    raise VideoError(f"{what}: unsupported dtype {arr.dtype}")
  if out.shape[-1] == 1:
    out = np.repeat(out, 3, axis=-1)
  return out


def _check_frames(frames: np.ndarray, path: Path) -> np.ndarray:
  arr = np.asarray(frames)
  if arr.ndim == 3:  # [T, H, W] grey
    arr = arr[..., None]
  if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
    raise VideoError(f"{path}: frames must be [T, H, W, 3] (or [T, H, W]), got shape {arr.shape}")
  if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
    raise VideoError(f"{path}: nothing to write, frames have shape {arr.shape}")
  return to_uint8(arr, f"{path}: frames")


def _atomic_target(path: Path, suffix: str) -> str:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{suffix}")
  os.close(fd)
  return tmp


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, *, crf: int = 17) -> None:
  """Writes frames [T, H, W, 3] (float in [0, 1] or uint8) as H.264 yuv420p; atomic; odd sizes padded."""
  path = Path(path)
  ext = path.suffix.lower()
  if ext not in WRITE_VIDEO_EXTENSIONS:
    raise VideoError(f"{path}: unsupported output extension '{ext}' (supported: {', '.join(WRITE_VIDEO_EXTENSIONS)})")
  if not (np.isfinite(fps) and fps > 0):
    raise VideoError(f"{path}: fps must be a positive number, got {fps}")
  arr = _check_frames(frames, path)
  pad_h, pad_w = arr.shape[1] % 2, arr.shape[2] % 2
  if pad_h or pad_w:  # yuv420p needs even sizes: repeat the last row / column
    arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
  import imageio_ffmpeg
  tmp = _atomic_target(path, ext)
  try:
    writer = imageio_ffmpeg.write_frames(
        tmp, (arr.shape[2], arr.shape[1]), fps=float(fps), codec="libx264", pix_fmt_out="yuv420p",
        quality=None, macro_block_size=1, ffmpeg_log_level="error",
        output_params=["-crf", str(int(crf)), "-movflags", "+faststart"])
    writer.send(None)
    for frame in arr:
      writer.send(np.ascontiguousarray(frame).tobytes())
    writer.close()
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, (OSError, RuntimeError)):
      raise VideoError(f"{path}: writing failed ({e})") from e
    raise


def write_gif(path: str | os.PathLike, frames: np.ndarray, fps: float, *, loop: int = 0) -> None:
  """Writes frames [T, H, W, 3] as an animated GIF (palette per frame, 10 ms time steps); atomic."""
  path = Path(path)
  if path.suffix.lower() != ".gif":
    raise VideoError(f"{path}: write_gif needs a .gif path")
  if not (np.isfinite(fps) and fps > 0):
    raise VideoError(f"{path}: fps must be a positive number, got {fps}")
  arr = _check_frames(frames, path)
  from PIL import Image
  images = [Image.fromarray(f) for f in arr]
  duration = max(10, int(round(100.0 / fps)) * 10)  # GIF counts centiseconds
  tmp = _atomic_target(path, ".gif")
  try:
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration,
                   loop=loop, disposal=1, optimize=False)
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError):
      raise VideoError(f"{path}: writing failed ({e})") from e
    raise


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes one image [H, W, 3] (float in [0, 1] or uint8) as PNG/JPEG/BMP by extension; atomic."""
  path = Path(path)
  ext = path.suffix.lower()
  formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}
  if ext not in formats:
    raise VideoError(f"{path}: unsupported image extension '{ext}' (supported: {', '.join(formats)})")
  arr = np.asarray(image)
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.ndim != 3 or arr.shape[-1] not in (1, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
    raise VideoError(f"{path}: image must be [H, W, 3] with H, W > 0, got shape {arr.shape}")
  arr = to_uint8(arr, f"{path}: image")
  from PIL import Image
  tmp = _atomic_target(path, ext)
  try:
    Image.fromarray(arr).save(tmp, format=formats[ext])
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
