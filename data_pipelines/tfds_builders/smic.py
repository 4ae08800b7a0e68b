"""SMIC (Li et al. 2013): micro-expression clips of the HS (100 fps), VIS and NIR (25 fps) cameras.

Expected manual_dir (either release; 'SMIC_all_raw' is preferred when both are present):
  SMIC_all_raw/HS/s1/micro/negative/s1_ne_01/image046.bmp
  SMIC_all_cropped/HS/s1/micro/negative/s1_ne_01/reg_image046.bmp
  (same below VIS/ and NIR/, subjects s1..s8 there)
SMIC has no spreadsheet: each clip folder already spans the micro-expression, so onset = first
frame, offset = last frame, apex = -1 (not annotated); the emotion is the class folder (negative /
positive / surprise); there are no AUs. `non_micro` folders are not micro-expressions and are left
out. A gap in the frame numbering inside a clip folder counts as missing frames. Choose the camera
with the config: hs_face256, vis_face256, nir_face256, hs_raw, ...
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from data_pipelines.tfds_builders import common, micro_base


@dataclasses.dataclass(eq=False)
class SmicConfig(micro_base.MicroConfig):
  modality: str = "HS"   # HS | VIS | NIR


_FPS = {"HS": 100.0, "VIS": 25.0, "NIR": 25.0}


class Smic(micro_base.MicroExpressionBuilder):
  """SMIC micro-expression clips (evaluation only), one camera per config."""

  BUILDER_CONFIGS = [c for m in ("HS", "VIS", "NIR")
                     for c in micro_base.standard_configs(SmicConfig, prefix=m.lower(), modality=m)]
  HOMEPAGE = "https://www.oulu.fi/en/university/faculties-and-units/faculty-information-technology-and-electrical-engineering/center-machine-vision-and-signal-analysis"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
SMIC is licensed per user: request it from the University of Oulu (CMVS), extract it and place the
folder SMIC_all_raw (or SMIC_all_cropped) with its HS / VIS / NIR sub-folders into manual_dir
(s1/micro/negative/s1_ne_01/image046.bmp ...). Builder config field frames_dir names the camera
folder explicitly (e.g. 'SMIC_all_raw/HS') if the search does not find it."""

  def _list_clips(self, manual_dir: Path, log: common.SkipLog) -> list[common.ClipSpec]:
    cfg = self.builder_config
    modality = cfg.modality.upper()
    if modality not in _FPS:
      raise ValueError(f"smic: config modality must be HS, VIS or NIR, got {cfg.modality!r}")
    root = common.find_root(
        manual_dir, r"s\d+", cfg.frames_dir, self.MANUAL_DOWNLOAD_INSTRUCTIONS,
        prefer=("all_raw", "raw"), what=f"SMIC {modality}",
        accept=lambda d: d.name.upper() == modality)
    self.info.metadata.update({"frames_dir": str(root), "non_micro_ignored": 0})
    clips = []
    for subject_dir in common.sub_dirs(root):
      micro = common.child_dir(subject_dir, "micro")
      if common.child_dir(subject_dir, "non_micro") is not None:
        self.info.metadata["non_micro_ignored"] += 1
      if micro is None:
        log.skip(subject_dir.name, f"no 'micro' folder in {subject_dir}")
        continue
      for emotion_dir in common.sub_dirs(micro):
        for clip_dir in common.sub_dirs(emotion_dir):
          item = f"{subject_dir.name}/{emotion_dir.name}/{clip_dir.name}"
          index = common.index_frames(clip_dir)
          if not index:
            log.skip(item, f"no numbered image frames in {clip_dir}")
            continue
          first, last = min(index), max(index)
          try:
            clips.append(common.clip_from_numbers(
                index, first, None, last, "onset_offset",
                clip_id=f"{modality}/{item}", subject=subject_dir.name, video=clip_dir.name,
                action_units="", emotion=emotion_dir.name, fps=_FPS[modality]))
          except common.SkipClip as e:
            log.skip(item, str(e))
    return clips
