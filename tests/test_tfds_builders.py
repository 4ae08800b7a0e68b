"""Real-data tfds builders on small fake trees in each data set's published layout.

Each test writes a few tiny frames and an annotation spreadsheet (xlsx written here with zipfile +
XML, as openpyxl is not a dependency), runs download_and_prepare with manual_dir, and reads the
result back with tfds.data_source + grain (data_pipelines.real_data).
"""

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_pipelines import real_data, tfds_builders as tb, video_io
from data_pipelines.tfds_builders import common

_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG = "http://schemas.openxmlformats.org/package/2006/relationships"
_CT = "application/vnd.openxmlformats-officedocument.spreadsheetml"


def write_xlsx(path, sheets):
  """Minimal .xlsx writer: {sheet name: rows}; strings go to the shared-string table as Excel does."""
  strings, index, parts = [], {}, {}
  for k, rows in enumerate(sheets.values(), 1):
    xml_rows = []
    for r, row in enumerate(rows, 1):
      cells = []
      for c, value in enumerate(row):
        ref = f"{chr(65 + c)}{r}"
        if value is None:
          continue
        if isinstance(value, str):
          index.setdefault(value, len(strings))
          if index[value] == len(strings):
            strings.append(value)
          cells.append(f'<c r="{ref}" t="s"><v>{index[value]}</v></c>')
        else:
          cells.append(f'<c r="{ref}"><v>{value}</v></c>')
      xml_rows.append(f'<row r="{r}">{"".join(cells)}</row>')
    parts[f"xl/worksheets/sheet{k}.xml"] = (f'<worksheet xmlns="{_MAIN}"><sheetData>{"".join(xml_rows)}'
                                            "</sheetData></worksheet>")
  n = len(sheets)
  files = {
      "[Content_Types].xml": (
          '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
          '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
          '<Default Extension="xml" ContentType="application/xml"/>'
          f'<Override PartName="/xl/workbook.xml" ContentType="{_CT}.sheet.main+xml"/>'
          f'<Override PartName="/xl/sharedStrings.xml" ContentType="{_CT}.sharedStrings+xml"/>'
          + "".join(f'<Override PartName="/xl/worksheets/sheet{k}.xml" ContentType="{_CT}.worksheet+xml"/>'
                    for k in range(1, n + 1)) + "</Types>"),
      "_rels/.rels": (f'<Relationships xmlns="{_PKG}"><Relationship Id="rId1" Type="{_REL}/officeDocument" '
                      'Target="xl/workbook.xml"/></Relationships>'),
      "xl/workbook.xml": (f'<workbook xmlns="{_MAIN}" xmlns:r="{_REL}"><sheets>'
                          + "".join(f'<sheet name="{escape(s)}" sheetId="{k}" r:id="rId{k}"/>'
                                    for k, s in enumerate(sheets, 1)) + "</sheets></workbook>"),
      "xl/_rels/workbook.xml.rels": (
          f'<Relationships xmlns="{_PKG}">'
          + "".join(f'<Relationship Id="rId{k}" Type="{_REL}/worksheet" Target="worksheets/sheet{k}.xml"/>'
                    for k in range(1, n + 1))
          + f'<Relationship Id="rId{n + 1}" Type="{_REL}/sharedStrings" Target="sharedStrings.xml"/>'
          "</Relationships>"),
      "xl/sharedStrings.xml": (f'<sst xmlns="{_MAIN}" count="{len(strings)}" uniqueCount="{len(strings)}">'
                               + "".join(f"<si><t>{escape(s)}</t></si>" for s in strings) + "</sst>"),
      **parts,
  }
  path.parent.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    for name, data in files.items():
      z.writestr(name, '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>' + data)


def level(n):
  """The grey level of fake frame number n (lets the tests check which frames were stored)."""
  return (n * 7) % 200 + 20


def make_frames(folder, numbers, pattern, size=(24, 32), grey=False, ext_format=None):
  folder.mkdir(parents=True, exist_ok=True)
  for n in numbers:
    arr = np.full(size if grey else size + (3,), level(n), np.uint8)
    Image.fromarray(arr).save(folder / pattern.format(n), format=ext_format)


def prepare(builder_cls, tmp_path, manual, config):
  builder = builder_cls(data_dir=str(tmp_path / "data"), config=config)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  return builder


def read_all(name, tmp_path, config):
  ds = real_data.micro_expression_dataset(name, tmp_path / "data", config=config)
  return {ex["clip_id"]: ex for ex in (ds[i] for i in range(len(ds)))}


def frame_levels(frames):
  return np.round(frames.reshape(len(frames), -1).mean(1) * 255).astype(int).tolist()


def skipped(builder):
  return {s["item"]: s["reason"] for s in builder.info.metadata["skipped"]}


SMALL = tb.MicroConfig(name="small16", image_size=16, crop="face")


# ----------------------------------------------------------------------------------- spreadsheets

def test_xlsx_reader_finds_offset_header_and_names_missing_columns(tmp_path):
  path = tmp_path / "t.xlsx"
  write_xlsx(path, {"Title": [["nothing here"]],
                    "Data": [["SAMM title"], [None], ["Subject", "Filename", "Onset Frame", "Offset Frame", "Notes"],
                             [6, "006_1_2", 5562.0, 5601, "ok"], [None, None], [7, "007_3_1", "/", 10, None]]})
  table = common.read_annotation(path, {"subject": ("Subject",), "onset": ("OnsetFrame",),
                                        "offset": ("Offset",  "Offset Frame")}, ["subject", "onset"])
  assert table.header_row == 2 and [r for r, _ in table.rows] == [4, 6]
  assert [common.parse_int(table.get(row, "onset")) for _, row in table.rows] == [5562, None]
  with pytest.raises(common.MalformedDataError, match=r"t\.xlsx.*missing: apex"):
    common.read_annotation(path, {"subject": ("Subject",), "apex": ("ApexFrame",)}, ["subject", "apex"])
  (tmp_path / "old.xls").write_bytes(b"\xd0\xcf\x11\xe0")
  with pytest.raises(common.MalformedDataError, match="old.xls.*convert"):
    common.read_tables(tmp_path / "old.xls")
  assert common.parse_aus("L10+R12A, AU4") == [10, 12, 4] and common.parse_aus("") == []
  assert common.emotion_3("Repression") == "negative" and common.emotion_3("others") == "other"
  assert common.frame_number(Path("006_05562.jpg")) == 5562


# ----------------------------------------------------------------------------------- CASME II

def _casme2_tree(root):
  frames = root / "CASME2_RAW_selected"
  make_frames(frames / "sub01" / "EP02_01f", range(40, 52), "img{}.jpg")
  make_frames(frames / "sub02" / "EP03_02", range(1, 9), "img{}.jpg")
  make_frames(frames / "sub02" / "EP04_01", [1, 2, 4, 5], "img{}.jpg")   # frame 3 missing
  write_xlsx(root / "CASME2-coding-20140508.xlsx", {"Sheet1": [
      ["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units", "Estimated Emotion"],
      [1, "EP02_01f", 42, 45, 49, None, "4+R10", "repression"],
      ["02", "EP03_02", 2, "/", 6, None, 12, "happiness"],
      [2, "EP04_01", 1, 2, 5, None, "4", "disgust"],
      [3, "EP09_01", 1, 2, 5, None, "4", "disgust"],
      [2, "EP03_02", "x", 2, 5, None, "4", "disgust"],
  ]})


def test_casme2_face_crops_labels_and_skips(tmp_path):
  _casme2_tree(tmp_path / "manual")
  builder = prepare(tb.Casme2, tmp_path, tmp_path / "manual", SMALL)
  clips = read_all("casme2", tmp_path, "small16")
  assert sorted(clips) == ["sub01/EP02_01f", "sub02/EP03_02"]
  a = clips["sub01/EP02_01f"]
  assert a["frames"].shape == (8, 16, 16, 3) and a["frames"].dtype == np.float32
  assert [abs(v - level(n)) <= 2 for v, n in zip(frame_levels(a["frames"]), range(42, 50))] == [True] * 8
  assert (int(a["onset"]), int(a["apex"]), int(a["offset"])) == (0, 3, 7)
  assert (int(a["source_onset"]), int(a["source_apex"]), int(a["source_offset"])) == (42, 45, 49)
  assert a["action_units"] == "4+R10" and a["aus"].tolist() == [4, 10]
  assert (a["emotion"], a["emotion_3"], a["subject"], float(a["fps"])) == ("repression", "negative", "sub01", 200.0)
  assert not a["face_found"] and a["crop_box"].tolist() == [0, 4, 24]   # flat frames: centre crop
  b = clips["sub02/EP03_02"]
  assert int(b["apex"]) == -1 and b["action_units"] == "12" and b["emotion_3"] == "positive"
  reasons = skipped(builder)
  assert builder.info.metadata["skipped_count"] == 3 and builder.info.metadata["no_face_count"] == 2
  assert "missing frames 3 (1 of 5)" in reasons["CASME2-coding-20140508.xlsx row 4 (sub02/EP04_01)"]
  assert "sub03/EP09_01 not found" in reasons["CASME2-coding-20140508.xlsx row 5"]
  assert "bad row" in reasons["CASME2-coding-20140508.xlsx row 6"]
  # The metadata is stored with the data set, not only on the builder that wrote it.
  assert tfds.builder("casme2/small16", data_dir=str(tmp_path / "data")).info.metadata["skipped_count"] == 3


def test_casme2_raw_keeps_original_frames_and_whole_span(tmp_path):
  _casme2_tree(tmp_path / "manual")
  prepare(tb.Casme2, tmp_path, tmp_path / "manual", tb.MicroConfig(name="whole_raw", image_size=None,
                                                                   span="whole"))
  a = read_all("casme2", tmp_path, "whole_raw")["sub01/EP02_01f"]
  assert a["frames"].shape == (12, 24, 32, 3)   # all of img40..img51, original size
  original = video_io.read_image(tmp_path / "manual/CASME2_RAW_selected/sub01/EP02_01f/img40.jpg")
  np.testing.assert_allclose(a["frames"][0], original, atol=1e-6)   # the JPEG bytes, untouched
  assert (int(a["onset"]), int(a["apex"]), int(a["offset"])) == (2, 5, 9)


def test_strict_config_and_missing_annotation_raise(tmp_path):
  _casme2_tree(tmp_path / "manual")
  with pytest.raises(tb.MalformedDataError, match=r"row 4 \(sub02/EP04_01\): missing frames 3"):
    prepare(tb.Casme2, tmp_path, tmp_path / "manual", tb.MicroConfig(name="strict", image_size=16, strict=True))
  (tmp_path / "manual" / "CASME2-coding-20140508.xlsx").unlink()
  with pytest.raises(tb.MalformedDataError, match="no annotation file.*CASME2-coding"):
    prepare(tb.Casme2, tmp_path, tmp_path / "manual", SMALL)


# ---------------------------------------------------------------------------------------- SAMM

def test_samm_title_rows_grey_frames_face_and_unreadable_image(tmp_path):
  import skimage.data
  import skimage.transform
  manual = tmp_path / "manual"
  face = skimage.transform.resize(skimage.data.astronaut()[:300, 80:380].mean(-1), (96, 96), anti_aliasing=True)
  clip = manual / "SAMM" / "006" / "006_1_2"
  clip.mkdir(parents=True)
  for n in range(5560, 5566):
    Image.fromarray(np.uint8(face)).save(clip / f"006_{n:05d}.jpg")
  make_frames(manual / "SAMM" / "007" / "007_3_1", range(100, 104), "007_{:05d}.jpg", grey=True)
  (manual / "SAMM" / "007" / "007_3_1" / "007_00102.jpg").write_bytes(b"\xff\xd8\xff broken")
  make_frames(manual / "SAMM" / "011" / "011_2_3", range(10, 14), "011_{:05d}.jpg", grey=True)
  write_xlsx(manual / "SAMM_Micro_FACS_Codes_v2.xlsx", {"FACS_Movement_Only": [
      ["SAMM - Spontaneous Micro-Facial Movement Dataset"], ["Micro-movements only"], [None],
      ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame", "Duration",
       "Type", "Action Units", "Notes", "Estimated Emotion"],
      [6, "006_1_2", 1, 5561, -1, 5564, 4, "Micro - 1/2", "R12", None, "Happiness"],
      [7, "007_3_1", 3, 100, 101, 103, 4, "Micro - 1/2", "4+7", None, "Anger"],
      [11, "011_2_3", 2, 10, 11, -1, 4, "Micro - 1/2", "14", None, "Contempt"],
  ]})
  builder = prepare(tb.Samm, tmp_path, manual, tb.MicroConfig(name="face32", image_size=32))
  clips = read_all("samm", tmp_path, "face32")
  assert list(clips) == ["006/006_1_2"]
  a = clips["006/006_1_2"]
  assert a["frames"].shape == (4, 32, 32, 3) and bool(a["face_found"])
  assert np.allclose(a["frames"][..., 0], a["frames"][..., 2])   # grey -> RGB
  assert (int(a["apex"]), a["aus"].tolist(), a["emotion"], a["emotion_3"]) == (-1, [12], "happiness", "positive")
  reasons = skipped(builder)
  assert "unreadable frame" in reasons["007/007_3_1"] and "007_00102.jpg" in reasons["007/007_3_1"]
  assert "bad row" in reasons["SAMM_Micro_FACS_Codes_v2.xlsx row 7"]


# ---------------------------------------------------------------------------------------- SMIC

def test_smic_camera_configs_emotion_folders_and_gaps(tmp_path):
  manual = tmp_path / "manual"
  for release, prefix in (("SMIC_all_raw", "image"), ("SMIC_all_cropped", "reg_image")):
    for cam in ("HS", "VIS"):
      base = manual / release / cam / "s1"
      make_frames(base / "micro" / "negative" / "s1_ne_01", range(46, 50), prefix + "{:03d}.bmp")
      make_frames(base / "micro" / "surprise" / "s1_sur_01", [3, 4, 6], prefix + "{:03d}.bmp")   # gap
      make_frames(base / "non_micro" / "s1_01", range(1, 4), prefix + "{:03d}.bmp")
  make_frames(manual / "SMIC_all_raw" / "VIS" / "s2" / "micro" / "positive" / "s2_po_02", range(1, 6), "image{:03d}.bmp")
  builder = prepare(tb.Smic, tmp_path, manual, tb.SmicConfig(name="vis16", image_size=16, modality="VIS"))
  assert builder.info.metadata["frames_dir"].endswith("SMIC_all_raw/VIS")
  clips = read_all("smic", tmp_path, "vis16")
  assert sorted(clips) == ["VIS/s1/negative/s1_ne_01", "VIS/s2/positive/s2_po_02"]
  a = clips["VIS/s2/positive/s2_po_02"]
  assert a["frames"].shape == (5, 16, 16, 3) and float(a["fps"]) == 25.0
  assert (int(a["onset"]), int(a["apex"]), int(a["offset"])) == (0, -1, 4)
  assert (a["emotion"], a["emotion_3"], a["subject"], a["aus"].tolist()) == ("positive", "positive", "s2", [])
  assert "missing frames 5" in skipped(builder)["s1/surprise/s1_sur_01"]


# ----------------------------------------------------------------------------------- CAS(ME)^3

def test_casme3_full_recording_and_clip_layouts(tmp_path):
  manual = tmp_path / "manual"
  make_frames(manual / "part_A" / "data" / "part_A" / "spNO.1" / "a" / "color", range(0, 12), "{}.jpg")
  write_xlsx(manual / "part_A" / "annotation" / "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx", {"label": [
      ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion"],
      ["spNO.1", "a", 2, 4, 6, "L12+R14", 1, "happy"],
      ["spNO.1", "a", 8, 9, 11, "4", 2, "disgust"],
      ["spNO.1", "a", 9, 10, 14, "4", 2, "disgust"],      # offset beyond the recording
      ["spNO.2", "b", 1, 2, 3, "1+2", 3, "surprise"],    # no frames at all
  ]})
  builder = prepare(tb.Casme3, tmp_path, manual, tb.MicroConfig(name="c16", image_size=16, crop="center"))
  clips = read_all("casme3", tmp_path, "c16")
  assert sorted(clips) == ["spNO.1/a/2", "spNO.1/a/8"]
  a = clips["spNO.1/a/2"]
  assert [abs(v - level(n)) <= 2 for v, n in zip(frame_levels(a["frames"]), range(2, 7))] == [True] * 5
  assert (int(a["apex"]), a["aus"].tolist(), a["emotion_3"], float(a["fps"])) == (2, [12, 14], "positive", 30.0)
  reasons = skipped(builder)
  assert "missing frames 12, 13, 14" in reasons["cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx row 4 (spNO.1/a/9)"]
  assert "no frames for spNO.2/b" in reasons["cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx row 5"]

  clip_manual = tmp_path / "clip_manual"   # Part_A_ME_clip layout, subject spelled spNo in the folder
  make_frames(clip_manual / "Part_A_ME_clip" / "frame" / "spNo.1_a_2", range(2, 7), "{}.jpg")
  depth = clip_manual / "Part_A_ME_clip" / "depth" / "spNo.1_a_2"   # sorts first, must not be read
  depth.mkdir(parents=True)
  for n in range(2, 7):
    Image.fromarray(np.zeros((24, 32), np.uint16)).save(depth / f"{n}.png")
  (clip_manual / "labels").mkdir()
  (clip_manual / "labels" / "cas(me)3_part_A_ME_label_JpgIndex_v2.csv").write_text(
      "Subject,Filename,Onset,Apex,Offset,AU,Objective class,emotion\nspNO.1,a,2,4,6,L12+R14,1,happy\n")
  prepare(tb.Casme3, tmp_path / "second", clip_manual, tb.MicroConfig(name="c16", image_size=16, crop="center"))
  again = read_all("casme3", tmp_path / "second", "c16")["spNO.1/a/2"]
  np.testing.assert_allclose(again["frames"], a["frames"], atol=1e-6)


# ------------------------------------------------------------------------------ generic video set

def test_video_folders_splits_clips_and_skips(tmp_path):
  manual = tmp_path / "manual"
  moving = np.stack([np.full((20, 30, 3), level(n) / 255.0, np.float32) for n in range(11)])
  video_io.write_video(manual / "vox" / "train" / "id1#abc.mp4", moving, fps=25)
  video_io.write_video(manual / "vox" / "train" / "short.mp4", moving[:2], fps=25)
  (manual / "vox" / "train" / "broken.mp4").write_bytes(b"garbage" * 20)
  make_frames(manual / "vox" / "train" / "JPEGImages" / "480p" / "bear", range(0, 6), "{:05d}.jpg", size=(18, 12))
  make_frames(manual / "vox" / "train" / "Annotations" / "480p" / "bear", range(0, 6), "{:05d}.png", size=(18, 12))
  make_frames(manual / "vox" / "test" / "id2", range(0, 4), "{:07d}.png", size=(16, 16))
  config = tb.VideoFoldersConfig(name="t4", clip_length=4, stride=3, image_size=8)
  builder = tb.VideoFolders(data_dir=str(tmp_path / "data"), config=config)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual / "vox")))
  assert set(builder.info.splits) == {"train", "test"}
  train = real_data.video_clip_dataset(tmp_path / "data", config="t4", split="train")
  clips = {ex["clip_id"]: ex for ex in (train[i] for i in range(len(train)))}
  assert sorted(clips) == ["train/JPEGImages/480p/bear#0000000", "train/id1#abc.mp4#0000000",
                           "train/id1#abc.mp4#0000003", "train/id1#abc.mp4#0000006"]
  c = clips["train/id1#abc.mp4#0000003"]
  assert c["frames"].shape == (4, 8, 8, 3) and int(c["start"]) == 3 and float(c["fps"]) == 25.0
  assert [abs(v - level(n)) <= 3 for v, n in zip(frame_levels(c["frames"]), range(3, 7))] == [True] * 4
  bear = clips["train/JPEGImages/480p/bear#0000000"]
  assert float(bear["fps"]) == 25.0 and bear["crop_box"].tolist() == [3, 0, 12]
  reasons = skipped(builder)
  assert "shorter than one clip" in reasons["train/short.mp4"] and "unreadable" in reasons["train/broken.mp4"]
  test = real_data.video_clip_dataset(tmp_path / "data", config="t4", split="test")
  assert len(test) == 1 and test[0]["video"] == "test/id2"
  with pytest.raises(FileNotFoundError, match="not prepared"):
    real_data.micro_expression_source("samm", tmp_path / "data")


def test_prepare_and_read_without_importing_tensorflow(tmp_path):
  """tensorflow is installed here, so the check is that building and reading never import it."""
  _casme2_tree(tmp_path / "manual")
  code = textwrap.dedent(f"""
      import sys
      from data_pipelines import real_data
      real_data.prepare("casme2", {str(tmp_path / 'data')!r}, {str(tmp_path / 'manual')!r}, config="raw")
      ds = real_data.micro_expression_dataset("casme2", {str(tmp_path / 'data')!r}, config="raw")
      assert ds[0]["frames"].ndim == 4 and len(ds) == 2
      loaded = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
      print("TF_MODULES", loaded)
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[1])
  assert out.returncode == 0, out.stderr[-3000:]
  assert "TF_MODULES []" in out.stdout, out.stdout
