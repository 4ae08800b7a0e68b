"""CASME II (Yan et al. 2014, 200 fps, 640x480 colour): micro-expression clips for evaluation.

Expected manual_dir (the archives as distributed, extracted; other folders are ignored):
  CASME2-coding-20140508.xlsx                       (any depth <= 3; 'CASME2-coding*.xlsx' / .csv)
  CASME2_RAW_selected/sub01/EP02_01f/img46.jpg      (preferred; also CASME2_RAW, or the cropped
  Cropped/sub01/EP02_01f/reg_img46.jpg               release: any folder holding subNN folders)
Spreadsheet columns: Subject (1 or '01' or 'sub01'), Filename (EP02_01f), OnsetFrame, ApexFrame,
OffsetFrame, Action Units ('4+7', 'R12'), Estimated Emotion. Frame numbers are the numbers in the
image file names (img46 -> 46). ApexFrame '/' (a few rows of the official sheet) -> apex -1.
Clip = frames onset..offset (config span 'whole': every frame of the EP folder).
"""

from __future__ import annotations

import re
from pathlib import Path

from data_pipelines.tfds_builders import common, micro_base

_COLUMNS = {
    "subject": ("Subject",), "filename": ("Filename", "File name"),
    "onset": ("OnsetFrame", "Onset Frame", "Onset"), "apex": ("ApexFrame", "Apex Frame", "Apex"),
    "offset": ("OffsetFrame", "Offset Frame", "Offset"),
    "aus": ("Action Units", "Action Unit", "AU", "AUs"),
    "emotion": ("Estimated Emotion", "Emotion"),
}


class Casme2(micro_base.MicroExpressionBuilder):
  """CASME II micro-expression clips (evaluation only)."""

  BUILDER_CONFIGS = micro_base.standard_configs()
  FPS = 200.0
  HOMEPAGE = "http://casme.psych.ac.cn/casme/e2"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
CASME II is licensed per user: request it from the authors (http://casme.psych.ac.cn/casme/e2),
extract it and place into manual_dir the coding spreadsheet CASME2-coding-20140508.xlsx and the
folder CASME2_RAW_selected (sub01/EP02_01f/img46.jpg ...). Builder config fields annotation_file /
frames_dir name them explicitly if the search does not find them."""

  def _list_clips(self, manual_dir: Path, log: common.SkipLog) -> list[common.ClipSpec]:
    cfg = self.builder_config
    ann = common.find_annotation(manual_dir, [r"CASME2-coding.*\.(xlsx|csv)", r"CASME2.*coding.*\.(xlsx|csv)"],
                                 cfg.annotation_file, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    root = common.find_root(manual_dir, r"sub\d+", cfg.frames_dir, self.MANUAL_DOWNLOAD_INSTRUCTIONS,
                            prefer=("CASME2_RAW_selected", "RAW"))
    table = common.read_annotation(ann, _COLUMNS, ["subject", "filename", "onset", "offset"])
    self.info.metadata.update({"annotation_file": str(ann), "frames_dir": str(root)})
    clips = []
    for rownum, row in table.rows:
      item = f"{ann.name} row {rownum}"
      digits = re.findall(r"\d+", common.cell_text(table.get(row, "subject")))
      video = common.cell_text(table.get(row, "filename"))
      onset, offset = common.parse_int(table.get(row, "onset")), common.parse_int(table.get(row, "offset"))
      if not digits or not video or onset is None or offset is None:
        log.skip(item, f"bad row (subject / filename / onset / offset missing or not a number): {row}")
        continue
      subject = f"sub{int(digits[-1]):02d}"
      folder = common.child_dir(root, subject)
      folder = common.child_dir(folder, video) if folder else None
      if folder is None:
        log.skip(item, f"clip folder {root / subject / video} not found")
        continue
      try:
        clips.append(common.clip_from_numbers(
            common.index_frames(folder), onset, common.parse_int(table.get(row, "apex")), offset, cfg.span,
            clip_id=f"{subject}/{video}", subject=subject, video=video,
            action_units=common.cell_text(table.get(row, "aus")),
            emotion=common.cell_text(table.get(row, "emotion")), fps=self.FPS))
      except common.SkipClip as e:
        log.skip(f"{item} ({subject}/{video})", str(e))
    return clips
