"""SAMM (Davison et al. 2018, 200 fps, 960x650 grey): micro-movement clips for evaluation.

Expected manual_dir:
  SAMM_Micro_FACS_Codes_v2.xlsx          (any depth <= 3; 'SAMM_Micro_FACS_Codes*.xlsx' / .csv)
  SAMM/006/006_1_2/006_05562.jpg         (any folder holding the three-digit subject folders)
The spreadsheet opens with several title rows; the header row (Subject, Filename, Inducement Code,
Onset Frame, Apex Frame, Offset Frame, Duration, Type, Action Units, Notes, Estimated Emotion) is
found by its names. Subject 6 -> folder 006; frame numbers are the last number in the file names
(006_05562 -> 5562). Apex -1 -> unknown (-1); offset -1 (unknown end) makes the row unusable.
Clip = frames onset..offset (config span 'whole': every frame of the clip folder).
"""

from __future__ import annotations

import re
from pathlib import Path

from data_pipelines.tfds_builders import common, micro_base

_COLUMNS = {
    "subject": ("Subject",), "filename": ("Filename", "File name"),
    "onset": ("Onset Frame", "OnsetFrame", "Onset"), "apex": ("Apex Frame", "ApexFrame", "Apex"),
    "offset": ("Offset Frame", "OffsetFrame", "Offset"),
    "aus": ("Action Units", "Action Unit", "AU", "AUs"),
    "emotion": ("Estimated Emotion", "Emotion"),
}


class Samm(micro_base.MicroExpressionBuilder):
  """SAMM micro-movement clips (evaluation only)."""

  BUILDER_CONFIGS = micro_base.standard_configs()
  FPS = 200.0
  HOMEPAGE = "https://helendavison.wixsite.com/samm"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
SAMM is licensed per user: request it from its authors (Manchester Metropolitan University),
extract it and place into manual_dir the folder SAMM (006/006_1_2/006_05562.jpg ...) and the
spreadsheet SAMM_Micro_FACS_Codes_v2.xlsx. Builder config fields annotation_file / frames_dir name
them explicitly if the search does not find them."""

  def _list_clips(self, manual_dir: Path, log: common.SkipLog) -> list[common.ClipSpec]:
    cfg = self.builder_config
    ann = common.find_annotation(manual_dir, [r"SAMM_Micro_FACS_Codes.*\.(xlsx|csv)", r"SAMM.*\.(xlsx|csv)"],
                                 cfg.annotation_file, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    root = common.find_root(manual_dir, r"\d{3}", cfg.frames_dir, self.MANUAL_DOWNLOAD_INSTRUCTIONS,
                            prefer=("SAMM",))
    table = common.read_annotation(ann, _COLUMNS, ["subject", "filename", "onset", "offset"])
    self.info.metadata.update({"annotation_file": str(ann), "frames_dir": str(root)})
    clips = []
    for rownum, row in table.rows:
      item = f"{ann.name} row {rownum}"
      digits = re.findall(r"\d+", common.cell_text(table.get(row, "subject")))
      video = common.cell_text(table.get(row, "filename"))
      onset, offset = common.parse_int(table.get(row, "onset")), common.parse_int(table.get(row, "offset"))
      if not digits or not video or onset is None or offset is None or onset < 0 or offset < 0:
        log.skip(item, f"bad row (subject / filename / onset / offset missing or negative): {row}")
        continue
      apex = common.parse_int(table.get(row, "apex"))
      apex = apex if apex is not None and apex >= 0 else None
      subject = f"{int(digits[-1]):03d}"
      folder = common.child_dir(root, subject)
      folder = common.child_dir(folder, video) if folder else None
      if folder is None:
        log.skip(item, f"clip folder {root / subject / video} not found")
        continue
      try:
        clips.append(common.clip_from_numbers(
            common.index_frames(folder), onset, apex, offset, cfg.span,
            clip_id=f"{subject}/{video}", subject=subject, video=video,
            action_units=common.cell_text(table.get(row, "aus")),
            emotion=common.cell_text(table.get(row, "emotion")), fps=self.FPS))
      except common.SkipClip as e:
        log.skip(f"{item} ({video})", str(e))
    return clips
