"""Shared parts of the real-data builders: spreadsheets, folder discovery, frame indexing, skips.

Spreadsheets: openpyxl and pandas are not dependencies of this project, so `.xlsx` files are read
here directly (an xlsx file is a zip of XML parts: workbook, shared strings, one XML per sheet).
Only cell values are read (strings, numbers, booleans); formulas give their cached value, dates
stay serial numbers, styles are ignored. `.csv` works too (e.g. a spreadsheet exported by hand);
legacy `.xls` does not (convert it to .xlsx or .csv).

Malformed input (see each builder's docstring for what "the clip" is):
- a missing annotation file, or one without the required header columns: an error naming the file;
- a bad spreadsheet row (missing / non-numeric onset or offset, offset < onset, ...), a clip folder
  that does not exist, missing frames between onset and offset, an unreadable image, a duplicate
  clip: the clip is SKIPPED, logged (absl warning) and listed in the prepared data set's
  `info.metadata["skipped"]` (item + reason) with `info.metadata["skipped_count"]`;
  with the builder config's `strict=True` each of these raises `MalformedDataError` instead.
- nothing usable at all: an error (an empty data set is never written).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Sequence
from xml.etree import ElementTree

from absl import logging

from data_pipelines.video_io import IMAGE_EXTENSIONS, natural_key


class MalformedDataError(ValueError):
  """A manual-download tree or annotation file that cannot be used as it is."""


class SkipClip(Exception):
  """Internal: this clip cannot be used; the message says why."""


# ------------------------------------------------------------------------------------ tables

def _local(tag: str) -> str:
  return tag.rsplit("}", 1)[-1]


def _cell_col(ref: str) -> int:
  col = 0
  for ch in ref:
    if not ch.isalpha():
      break
    col = col * 26 + (ord(ch.upper()) - ord("A") + 1)
  return col - 1


def _number(text: str):
  value = float(text)
  return int(value) if value.is_integer() else value


def _xlsx_sheets(path: Path) -> list[tuple[str, list[list]]]:
  """All sheets of an xlsx file as (name, rows); cell values are str / int / float / bool / None."""
  try:
    zf = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise MalformedDataError(f"{path}: not a readable .xlsx file ({e})") from e
  with zf:
    names = set(zf.namelist())
    try:
      workbook = ElementTree.fromstring(zf.read("xl/workbook.xml"))
      rels = ElementTree.fromstring(zf.read("xl/_rels/workbook.xml.rels"))
    except (KeyError, ElementTree.ParseError) as e:
      raise MalformedDataError(f"{path}: not a valid .xlsx workbook ({e})") from e
    targets = {r.get("Id"): r.get("Target") for r in rels}
    shared: list[str] = []
    if "xl/sharedStrings.xml" in names:
      for si in ElementTree.fromstring(zf.read("xl/sharedStrings.xml")):
        # Plain <t>, or rich-text runs <r><t>; phonetic hints (<rPh>) are not part of the value.
        parts = []
        for child in si:
          if _local(child.tag) == "t":
            parts.append(child.text or "")
          elif _local(child.tag) == "r":
            parts.extend(t.text or "" for t in child if _local(t.tag) == "t")
        shared.append("".join(parts))
    sheets = []
    for sheet in (e for e in workbook.iter() if _local(e.tag) == "sheet"):
      rid = next((v for k, v in sheet.attrib.items() if _local(k) == "id"), None)
      target = targets.get(rid, "")
      member = target.lstrip("/") if target.startswith("/") else "xl/" + target
      if member not in names:
        continue
      rows: dict[int, dict[int, object]] = {}
      next_row = 0
      for row in (e for e in ElementTree.fromstring(zf.read(member)).iter() if _local(e.tag) == "row"):
        r = int(row.get("r")) - 1 if row.get("r") else next_row
        next_row = r + 1
        cells, next_col = {}, 0
        for c in (e for e in row if _local(e.tag) == "c"):
          col = _cell_col(c.get("r")) if c.get("r") else next_col
          next_col = col + 1
          kind = c.get("t", "n")
          v = next((e.text for e in c if _local(e.tag) == "v"), None)
          if kind == "inlineStr":
            value = "".join(t.text or "" for t in c.iter() if _local(t.tag) == "t")
          elif v is None:
            value = None
          elif kind == "s":
            value = shared[int(v)]
          elif kind == "str":
            value = v
          elif kind == "b":
            value = v.strip() == "1"
          elif kind == "e":
            value = None
          else:
            try:
              value = _number(v)
            except ValueError:
              value = v
          cells[col] = value
        rows[r] = cells
      width = 1 + max((max(c) for c in rows.values() if c), default=-1)
      table = [[rows.get(r, {}).get(c) for c in range(width)] for r in range(1 + max(rows, default=-1))]
      sheets.append((sheet.get("name", ""), table))
  return sheets


def read_tables(path: str | os.PathLike) -> list[tuple[str, list[list]]]:
  """Sheets of an .xlsx / .xlsm / .csv file as (sheet name, rows)."""
  path = Path(path)
  if not path.is_file():
    raise MalformedDataError(f"{path}: annotation file not found")
  ext = path.suffix.lower()
  if ext in (".xlsx", ".xlsm"):
    return _xlsx_sheets(path)
  if ext == ".csv":
    with open(path, newline="", encoding="utf-8-sig") as f:
      return [("csv", [[(c if c != "" else None) for c in row] for row in csv.reader(f)])]
  raise MalformedDataError(f"{path}: unsupported annotation format '{ext}' (use .xlsx or .csv; "
                           "convert legacy .xls files, or install xlrd and export to csv)")


def _norm(text) -> str:
  return re.sub(r"[^a-z0-9]", "", str(text).lower()) if text is not None else ""


@dataclasses.dataclass
class Table:
  """Data rows of an annotation sheet with its header located; `get(row, key)` by column key."""
  path: Path
  header_row: int                 # 0-based index of the header row in the sheet
  columns: dict[str, int]
  rows: list[tuple[int, list]]    # (1-based spreadsheet row number, cells)

  def get(self, row: list, key: str):
    idx = self.columns.get(key)
    return row[idx] if idx is not None and idx < len(row) else None


def read_annotation(path: str | os.PathLike, columns: dict[str, Sequence[str]],
                    required: Iterable[str], max_scan: int = 40) -> Table:
  """Finds the header row (title rows above it are skipped, as in SAMM's sheet) and maps columns.

  columns: key -> accepted header names (compared ignoring case, spaces and punctuation).
  """
  path = Path(path)
  required = list(required)
  aliases = {key: {_norm(a) for a in names} for key, names in columns.items()}
  best_missing = None
  for _, table in read_tables(path):
    for i, row in enumerate(table[:max_scan]):
      found = {}
      for j, cell in enumerate(row):
        n = _norm(cell)
        for key, names in aliases.items():
          if n in names and key not in found:
            found[key] = j
      missing = [k for k in required if k not in found]
      if not missing:
        data = [(r + 1, cells) for r, cells in enumerate(table) if r > i
                and any(c is not None and str(c).strip() for c in cells)]
        return Table(path, i, found, data)
      if best_missing is None or len(missing) < len(best_missing):
        best_missing = missing
  wanted = ", ".join(f"{k} ({' / '.join(columns[k])})" for k in (best_missing or required))
  raise MalformedDataError(f"{path}: no header row with the required columns; missing: {wanted}")


def parse_int(value) -> int | None:
  """A frame number from a cell: 46, 46.0, ' 46 ' -> 46; '', '/', '-', None -> None."""
  if value is None or isinstance(value, bool):
    return None
  if isinstance(value, (int, float)):
    return int(value) if float(value).is_integer() else None
  text = str(value).strip()
  if re.fullmatch(r"-?\d+(\.0+)?", text):
    return int(float(text))
  return None


def cell_text(value) -> str:
  """Cell as text; integral numbers without '.0' (an AU cell '4' read as the number 4.0)."""
  if value is None:
    return ""
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  return str(value).strip()


def parse_aus(text: str) -> list[int]:
  """AU numbers in an AU string ('4+7', 'L10+R12A', 'AU4, AU7', '(4)+7?'): unique, in order."""
  seen = []
  for n in re.findall(r"\d+", text or ""):
    if int(n) not in seen:
      seen.append(int(n))
  return seen


_EMOTION_3 = {
    "happiness": "positive", "happy": "positive", "positive": "positive",
    "disgust": "negative", "sadness": "negative", "sad": "negative", "fear": "negative",
    "anger": "negative", "angry": "negative", "contempt": "negative", "repression": "negative",
    "negative": "negative",
    "surprise": "surprise", "surprised": "surprise",
}


def emotion_3(emotion: str) -> str:
  """MEGC-2019 composite class (positive / negative / surprise), 'other' for anything else."""
  return _EMOTION_3.get(emotion.strip().lower(), "other")


# ----------------------------------------------------------------------------- file discovery

def _walk_dirs(root: Path, max_depth: int) -> Iterable[tuple[Path, int]]:
  """Breadth-first directories under root (root included), hidden ones skipped, up to max_depth."""
  level = [root]
  for depth in range(max_depth + 1):
    nxt = []
    for d in level:
      yield d, depth
      try:
        with os.scandir(d) as it:
          subs = sorted((Path(e.path) for e in it if e.is_dir() and not e.name.startswith(".")),
                        key=lambda p: natural_key(p.name))
      except OSError:
        continue
      nxt.extend(subs)
    level = nxt


def resolve_override(manual_dir: Path, value: str | None) -> Path | None:
  if not value:
    return None
  p = Path(value)
  return p if p.is_absolute() else manual_dir / p


def find_annotation(manual_dir: Path, patterns: Sequence[str], override: str | None,
                    instructions: str, max_depth: int = 3) -> Path:
  """The annotation file: the config's override, else the first file matching a pattern."""
  explicit = resolve_override(manual_dir, override)
  if explicit is not None:
    if not explicit.is_file():
      raise MalformedDataError(f"{explicit}: annotation file (from the builder config) not found")
    return explicit
  regexes = [re.compile(p, re.IGNORECASE) for p in patterns]
  for d, _ in _walk_dirs(manual_dir, max_depth):
    try:
      files = sorted(e.name for e in os.scandir(d) if e.is_file() and not e.name.startswith((".", "~$")))
    except OSError:
      continue
    for rx in regexes:
      for name in files:
        if rx.fullmatch(name):
          return d / name
  raise MalformedDataError(f"{manual_dir}: no annotation file matching {list(patterns)} (searched "
                           f"{max_depth} levels deep).\n{instructions}")


def find_root(manual_dir: Path, child: str, override: str | None, instructions: str,
              prefer: Sequence[str] = (), max_depth: int = 5, what: str = "frames",
              accept: Callable[[Path], bool] | None = None) -> Path:
  """The folder whose sub-folders match regex `child` (e.g. r'sub\\d+').

  Candidates are ranked by how many of the `prefer` names their path contains (then by the first
  one, then by depth); `accept` can veto a candidate; an explicit override wins.
  """
  explicit = resolve_override(manual_dir, override)
  if explicit is not None:
    if not explicit.is_dir():
      raise MalformedDataError(f"{explicit}: {what} folder (from the builder config) not found")
    return explicit
  rx = re.compile(child, re.IGNORECASE)
  found, blocked = [], []
  for d, _ in _walk_dirs(manual_dir, max_depth):
    if any(d.is_relative_to(b) for b in blocked):
      continue
    try:
      subs = [e for e in os.scandir(d) if e.is_dir() and rx.fullmatch(e.name)]
    except OSError:
      continue
    if subs and (accept is None or accept(d)):
      found.append(d)
      blocked.append(d)
  if not found:
    raise MalformedDataError(f"{manual_dir}: no {what} folder with sub-folders matching '{child}' "
                             f"(searched {max_depth} levels deep).\n{instructions}")

  def rank(p: Path):  # most preferred names in the path first, then the earliest one, then shallow
    rel = str(p.relative_to(manual_dir)).lower()
    hits = [i for i, name in enumerate(prefer) if name.lower() in rel]
    return (-len(hits), min(hits) if hits else len(prefer), len(p.parts), str(p))
  return sorted(found, key=rank)[0]


def child_dir(parent: Path, name: str) -> Path | None:
  """parent/name, matched case-insensitively when the exact spelling is absent."""
  exact = parent / name
  if exact.is_dir():
    return exact
  low = name.lower()
  try:
    for e in os.scandir(parent):
      if e.is_dir() and e.name.lower() == low:
        return Path(e.path)
  except OSError:
    pass
  return None


def sub_dirs(folder: Path) -> list[Path]:
  """Sub-folders in natural order (hidden ones ignored)."""
  try:
    dirs = [Path(e.path) for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")]
  except OSError:
    return []
  return sorted(dirs, key=lambda p: natural_key(p.name))


def image_files(folder: Path) -> list[Path]:
  """Image files of a folder in natural order (hidden files and other files ignored)."""
  try:
    files = [Path(e.path) for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")
             and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
  except OSError:
    return []
  return sorted(files, key=lambda p: natural_key(p.name))


def frame_number(path: Path) -> int | None:
  """The frame number of a file: the last digit run of its stem ('reg_img46' -> 46, '006_05562')."""
  runs = re.findall(r"\d+", path.stem)
  return int(runs[-1]) if runs else None


def index_frames(folder: Path) -> dict[int, Path]:
  """Frame number -> file for one clip folder (first file wins if two share a number)."""
  index: dict[int, Path] = {}
  for f in image_files(folder):
    n = frame_number(f)
    if n is not None and n not in index:
      index[n] = f
  return index


def encode_png(frame) -> bytes:
  """[H, W, 3] float in [0, 1] or uint8 -> PNG bytes (what the builders store per frame)."""
  import io
  from PIL import Image
  from data_pipelines.video_io import to_uint8
  buf = io.BytesIO()
  Image.fromarray(to_uint8(frame)).save(buf, format="PNG")
  return buf.getvalue()


def describe_missing(numbers: Sequence[int], total: int) -> str:
  shown = ", ".join(str(n) for n in numbers[:8]) + (", ..." if len(numbers) > 8 else "")
  return f"missing frames {shown} ({len(numbers)} of {total})"


# ---------------------------------------------------------------------------------- clip specs

@dataclasses.dataclass
class ClipSpec:
  """One micro-expression clip before decoding: where its frames are and what the labels say."""
  clip_id: str
  subject: str
  video: str
  frames: list[Path]
  onset: int               # indices into `frames`
  apex: int                # -1 when unknown
  offset: int
  source_onset: int        # frame numbers as annotated (-1 when unknown)
  source_apex: int
  source_offset: int
  action_units: str
  emotion: str
  fps: float


def clip_from_numbers(index: dict[int, Path], onset: int, apex: int | None, offset: int, span: str,
                      **labels) -> ClipSpec:
  """Selects the frames of an annotated clip; raises SkipClip when a needed frame is missing."""
  if offset < onset:
    raise SkipClip(f"offset {offset} is before onset {onset}")
  if apex is not None and not onset <= apex <= offset:
    raise SkipClip(f"apex {apex} is outside onset..offset {onset}..{offset}")
  needed = range(onset, offset + 1)
  missing = [n for n in needed if n not in index]
  if missing:
    raise SkipClip(describe_missing(missing, len(needed)))
  if span == "whole":
    numbers = sorted(index)
  elif span == "onset_offset":
    numbers = list(needed)
  else:
    raise ValueError(f"span must be 'onset_offset' or 'whole', got {span!r}")
  pos = {n: i for i, n in enumerate(numbers)}
  return ClipSpec(frames=[index[n] for n in numbers], onset=pos[onset],
                  apex=pos[apex] if apex is not None else -1, offset=pos[offset],
                  source_onset=onset, source_apex=apex if apex is not None else -1,
                  source_offset=offset, **labels)


class SkipLog:
  """Skipped items with reasons: logged as they happen, stored in the data set's metadata."""

  def __init__(self, name: str, strict: bool):
    self.name, self.strict = name, strict
    self.items: list[dict[str, str]] = []
    self.no_face: list[str] = []

  def skip(self, item: str, reason: str) -> None:
    if self.strict:
      raise MalformedDataError(f"{self.name}: {item}: {reason}")
    logging.warning("%s: skipping %s: %s", self.name, item, reason)
    self.items.append({"item": item, "reason": reason})

  def metadata(self) -> dict:
    return {"skipped_count": len(self.items), "skipped": list(self.items),
            "no_face_count": len(self.no_face), "no_face": list(self.no_face)}
