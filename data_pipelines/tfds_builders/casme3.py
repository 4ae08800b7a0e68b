"""CAS(ME)^3 Part A (Li et al. 2022, 30 fps, colour + depth): micro-expressions for evaluation.

Expected manual_dir, either layout (colour frames only; depth is not read):
  full recordings:  part_A/data/part_A/spNO.1/a/color/0.jpg ... (frames numbered from 0, the
                    'JpgIndex' of the annotation)
  clip folders:     Part_A_ME_clip/frame/spNO.1_a_355/355.jpg ... (one folder per micro-expression,
                    named subject_filename_onset, frames keep their recording numbers)
  annotation:       cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx (any depth <= 3; '*part_A_ME_label*'
                    .xlsx / .csv); columns Subject (spNO.1), Filename (a), Onset, Apex, Offset,
                    AU ('L12+R14'), Objective class, emotion.
A recording holds several micro-expressions: clip_id is subject/filename/onset. Clip = frames
onset..offset; config span 'whole' means the clip folder in the clip layout and stays onset..offset
for full recordings (a whole recording is minutes long). Subject folders are matched ignoring case
(spNO.1 / spNo.1).
"""

from __future__ import annotations

from pathlib import Path

from data_pipelines.tfds_builders import common, micro_base

_COLUMNS = {
    "subject": ("Subject", "sub"), "filename": ("Filename", "seq", "File name"),
    "onset": ("Onset", "OnsetFrame", "Onset Frame"), "apex": ("Apex", "ApexFrame", "Apex Frame"),
    "offset": ("Offset", "OffsetFrame", "Offset Frame"),
    "aus": ("AU", "Action Units", "Action Unit", "AUs"),
    "emotion": ("emotion", "Estimated Emotion"),
}


class Casme3(micro_base.MicroExpressionBuilder):
  """CAS(ME)^3 Part A micro-expression clips (evaluation only)."""

  BUILDER_CONFIGS = micro_base.standard_configs()
  FPS = 30.0
  HOMEPAGE = "http://casme.psych.ac.cn/casme/e4"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
CAS(ME)^3 is licensed per user: request it from the authors (http://casme.psych.ac.cn/casme/e4),
extract Part A and place into manual_dir its annotation file cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx
and its colour frames, either the full recordings (spNO.1/a/color/0.jpg ...) or the clip folders
(Part_A_ME_clip/frame/spNO.1_a_355/355.jpg ...). Builder config fields annotation_file /
frames_dir name them explicitly if the search does not find them."""

  def _list_clips(self, manual_dir: Path, log: common.SkipLog) -> list[common.ClipSpec]:
    cfg = self.builder_config
    ann = common.find_annotation(manual_dir, [r".*part_A_ME_label.*\.(xlsx|csv)", r".*part_A.*ME.*\.(xlsx|csv)"],
                                 cfg.annotation_file, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    root = common.find_root(manual_dir, r"spNO\.\d+(_[A-Za-z0-9]+_\d+)?", cfg.frames_dir,
                            self.MANUAL_DOWNLOAD_INSTRUCTIONS, prefer=("Part_A_ME_clip", "frame"),
                            accept=lambda d: d.name.lower() != "depth")
    table = common.read_annotation(ann, _COLUMNS, ["subject", "filename", "onset", "offset"])
    self.info.metadata.update({"annotation_file": str(ann), "frames_dir": str(root)})
    clips = []
    for rownum, row in table.rows:
      item = f"{ann.name} row {rownum}"
      subject = common.cell_text(table.get(row, "subject"))
      video = common.cell_text(table.get(row, "filename"))
      onset, offset = common.parse_int(table.get(row, "onset")), common.parse_int(table.get(row, "offset"))
      if not subject or not video or onset is None or offset is None or onset < 0:
        log.skip(item, f"bad row (subject / filename / onset / offset missing or not a number): {row}")
        continue
      apex = common.parse_int(table.get(row, "apex"))
      span = cfg.span
      folder = common.child_dir(root, f"{subject}_{video}_{onset}")           # clip layout
      if folder is None:                                                       # full recordings
        recording = common.child_dir(root, subject)
        recording = common.child_dir(recording, video) if recording else None
        folder = common.child_dir(recording, "color") if recording else None
        span = "onset_offset"
      if folder is None:
        log.skip(item, f"no frames for {subject}/{video}: neither {root / f'{subject}_{video}_{onset}'} "
                       f"nor {root / subject / video / 'color'} exists")
        continue
      try:
        clips.append(common.clip_from_numbers(
            common.index_frames(folder), onset, apex, offset, span,
            clip_id=f"{subject}/{video}/{onset}", subject=subject, video=video,
            action_units=common.cell_text(table.get(row, "aus")),
            emotion=common.cell_text(table.get(row, "emotion")), fps=self.FPS))
      except common.SkipClip as e:
        log.skip(f"{item} ({subject}/{video}/{onset})", str(e))
    return clips
