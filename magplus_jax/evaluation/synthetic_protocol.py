"""The synthetic magnification protocol of Oh et al. 2018 (Sec. 5.1), as reused by FlowMag.

Two sweeps on held-out procedural pairs (`data_pipelines/procedural.py`: images and seeds never
used for training, motion known exactly, the exactly magnified frame rendered from the scene):
  * sub-pixel test: input motion 0.04 .. 1 px (max |flow|), alpha = 10 / motion, so the magnified
    motion is always 10 px; no noise unless `subpixel_noise` is set.
  * noise test: input motion 0.05 px, alpha = 200 (again 10 px), additive Gaussian noise of std
    0.01 .. 100 on a 0-255 scale added to both input frames (not to the truth), clipped to [0, 1].
Score: SSIM (metrics.ssim) of the magnifier's output against the exact magnified frame after an
8-px border crop, averaged over `num_pairs` pairs per point. The "input" line is the SSIM of the
un-magnified frame against the same truth: a method below it made things worse than doing nothing.

The same pairs (scene, motion field shape, noise draw per index) are used at every point of a sweep
and for every magnifier, so the curves differ only by what the sweep varies. Pairs come from
`make_pair`, the one place that talks to the generator; swapping the data source means replacing it.

Entry points: `run_protocol(magnifiers, spec) -> results`, `write_report(results, out_dir)` (a
markdown table and PNG curves). The CLI / evaluate wiring lives elsewhere.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from magplus_jax.evaluation import metrics
from magplus_jax.models.magnifiers import Magnifier

_PAIR_TAG = 0x0E18  # keeps protocol seeds apart from training / evaluation example seeds


@dataclasses.dataclass(frozen=True)
class ProtocolSpec:
  image_size: int = 128
  num_pairs: int = 16
  batch_size: int = 8
  seed: int = 0
  border: int = 8
  magnified_px: float = 10.0                      # alpha = magnified_px / motion
  motions: tuple[float, ...] = tuple(float(v) for v in np.geomspace(0.04, 1.0, 8).round(4))
  subpixel_noise: float = 0.0                     # 0-255 scale
  noise_stds: tuple[float, ...] = (0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0)  # 0-255 scale
  noise_motion: float = 0.05
  noise_alpha: float = 200.0
  supersample: int = 4
  sources: str = "all"                            # procedural sources: "faces", "textures", "all"

  @classmethod
  def from_config(cls, cfg) -> "ProtocolSpec":
    cfg = {} if cfg is None else cfg
    kw = {}
    for f in dataclasses.fields(cls):
      v = cfg.get(f.name, f.default)
      kw[f.name] = tuple(float(x) for x in v) if isinstance(f.default, tuple) else v
    spec = cls(**kw)
    spec.validate()
    return spec

  def validate(self) -> None:
    if self.image_size <= 2 * self.border + 10:
      raise ValueError(f"protocol image_size {self.image_size} leaves nothing after the "
                       f"{self.border}-px border crop and the 11-px SSIM window")
    if self.num_pairs < 1 or self.batch_size < 1:
      raise ValueError("protocol num_pairs and batch_size must be >= 1")
    if not self.motions or min(self.motions) <= 0 or self.noise_motion <= 0:
      raise ValueError(f"protocol motions must be > 0; got {self.motions}, {self.noise_motion}")
    if not self.noise_stds or min(self.noise_stds) < 0 or self.subpixel_noise < 0:
      raise ValueError(f"protocol noise stds must be >= 0; got {self.noise_stds}")
    if self.magnified_px <= 0 or self.noise_alpha <= 0:
      raise ValueError("protocol magnified_px and noise_alpha must be > 0")


def make_pair(spec: ProtocolSpec, motion: float, alpha: float, noise_255: float,
              index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(ref, frame, truth) [n, n, 3] float32: a held-out procedural scene moved by a smooth field of
  max |flow| = motion px; truth is the scene moved by alpha x that field, noise-free.

  Scene and field shape depend only on (seed, index) and the magnified motion, the noise only on
  (seed, index): the sweeps compare like with like.
  """
  from data_pipelines import procedural  # pylint: disable=g-import-not-at-top
  pspec = procedural.ProceduralSpec(image_size=spec.image_size, supersample=spec.supersample,
                                    sources=spec.sources)
  n, s = pspec.image_size, pspec.supersample
  rng = np.random.default_rng([spec.seed, _PAIR_TAG, int(index)])
  magnified = alpha * motion
  unit = procedural.sample_unit_field(rng, n, pspec)
  unit = procedural.make_fold_free(unit, n, max(magnified, motion), pspec.fold_limit)
  field = unit.scaled(motion)
  scene = procedural.sample_scene(rng, "test", pspec, margin_px=1.5 * max(magnified, motion) + 2.0)
  ref = procedural.render(scene, None, s)
  frame = procedural.render(scene, field, s)
  truth = procedural.render(scene, field.scaled(alpha), s)
  noise_rng = np.random.default_rng([spec.seed, _PAIR_TAG, int(index), 1])
  ref = procedural.add_noise(noise_rng, ref, noise_255 / 255.0)
  frame = procedural.add_noise(noise_rng, frame, noise_255 / 255.0)
  return ref, frame, truth


def _pairs(spec: ProtocolSpec, motion: float, alpha: float, noise_255: float) -> dict:
  made = [make_pair(spec, motion, alpha, noise_255, i) for i in range(spec.num_pairs)]
  return {k: np.stack([m[i] for m in made]) for i, k in enumerate(("ref", "frame", "truth"))}


def _label_magnifiers(magnifiers) -> dict[str, Magnifier]:
  if isinstance(magnifiers, Mapping):
    return dict(magnifiers)
  out = {}
  for m in magnifiers:
    label, k = m.name, 2
    while label in out:
      label, k = f"{m.name}_{k}", k + 1
    out[label] = m
  return out


def _magnified_ssim(mag: Magnifier, clip_fn, pairs: dict, alpha: float, spec: ProtocolSpec
                    ) -> float:
  """Mean SSIM of output frame 1 against the truth, in fixed-size batches (padded by repetition,
  so each magnifier compiles once per sweep)."""
  n = spec.num_pairs
  bs = min(spec.batch_size, n)
  scores = []
  for start in range(0, n, bs):
    idx = np.arange(start, start + bs) % n
    frames = jnp.asarray(np.stack([pairs["ref"][idx], pairs["frame"][idx]], axis=1))
    out = clip_fn(mag.params, frames, jnp.full((bs,), alpha, jnp.float32))
    out = np.asarray(out[:, 1])
    keep = min(bs, n - start)
    scores += [_ssim(out[i:i + 1], pairs["truth"][idx[i]:idx[i] + 1], spec.border)
               for i in range(keep)]
  return float(np.mean(scores))


def _ssim(x: np.ndarray, y: np.ndarray, border: int) -> float:
  return float(_ssim_jit(jnp.asarray(x), jnp.asarray(y), border))


_ssim_jit = jax.jit(metrics.ssim, static_argnums=2)


def _sweep(mags: dict, spec: ProtocolSpec, xs, points) -> dict:
  """points: (motion, alpha, noise_255) per x."""
  res = {"x": [float(x) for x in xs], "alpha": [], "motion": [], "input": []}
  res.update({label: [] for label in mags})
  fns = {label: jax.jit(m.magnify_clip) for label, m in mags.items()}
  for motion, alpha, noise in points:
    pairs = _pairs(spec, motion, alpha, noise)
    res["alpha"].append(float(alpha))
    res["motion"].append(float(motion))
    res["input"].append(float(np.mean([_ssim(pairs["frame"][i:i + 1], pairs["truth"][i:i + 1],
                                             spec.border) for i in range(spec.num_pairs)])))
    for label, m in mags.items():
      res[label].append(_magnified_ssim(m, fns[label], pairs, alpha, spec))
  return res


def run_protocol(magnifiers: Sequence[Magnifier] | Mapping[str, Magnifier],
                 spec: ProtocolSpec | None = None, tests: Sequence[str] = ("subpixel", "noise")
                 ) -> dict:
  """Scores every magnifier on the sub-pixel and noise sweeps.

  Returns {"spec": {...}, "magnifiers": [labels], "subpixel": sweep, "noise": sweep}, a sweep being
  {"x": [...], "alpha": [...], "motion": [...], "input": [ssim per x], label: [ssim per x], ...}.
  Labels are the magnifiers' names (deduplicated with _2, _3 ...) or the mapping's keys.
  """
  spec = spec or ProtocolSpec()
  spec.validate()
  mags = _label_magnifiers(magnifiers)
  results = {"spec": dataclasses.asdict(spec), "magnifiers": list(mags)}
  for test in tests:
    if test == "subpixel":
      points = [(m, spec.magnified_px / m, spec.subpixel_noise) for m in spec.motions]
      results["subpixel"] = _sweep(mags, spec, spec.motions, points)
    elif test == "noise":
      points = [(spec.noise_motion, spec.noise_alpha, s) for s in spec.noise_stds]
      results["noise"] = _sweep(mags, spec, spec.noise_stds, points)
    else:
      raise ValueError(f"protocol test {test!r} is unknown; choose 'subpixel' or 'noise'")
  return results


_TITLES = {"subpixel": ("Sub-pixel test", "input motion (px)"),
           "noise": ("Noise test", "noise std (0-255 scale)")}


def format_table(results: dict) -> str:
  """Markdown: one table per sweep, SSIM per magnifier, best value per row in bold."""
  lines = []
  labels = results["magnifiers"]
  for test in ("subpixel", "noise"):
    if test not in results:
      continue
    sw = results[test]
    title, xlabel = _TITLES[test]
    spec = results["spec"]
    lines += [f"### {title} (SSIM vs exact magnified frame, {spec['border']}-px border crop, "
              f"{spec['num_pairs']} pairs of {spec['image_size']} px per point)", "",
              "| " + " | ".join([xlabel, "alpha", "input"] + labels) + " |",
              "|" + "---|" * (3 + len(labels))]
    for i, x in enumerate(sw["x"]):
      vals = [sw[k][i] for k in ["input"] + labels]
      best = max(vals)
      cells = [f"**{v:.4f}**" if v == best else f"{v:.4f}" for v in vals]
      lines.append("| " + " | ".join([f"{x:g}", f"{sw['alpha'][i]:g}"] + cells) + " |")
    lines.append("")
  return "\n".join(lines)


def write_report(results: dict, out_dir: str) -> dict[str, str]:
  """Writes results.json, results.md and one PNG per sweep into out_dir; returns their paths."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  os.makedirs(out_dir, exist_ok=True)
  paths = {"json": os.path.join(out_dir, "synthetic_protocol.json"),
           "markdown": os.path.join(out_dir, "synthetic_protocol.md")}
  with open(paths["json"], "w") as f:
    json.dump(results, f, indent=1)
  with open(paths["markdown"], "w") as f:
    f.write(format_table(results))
  for test in ("subpixel", "noise"):
    if test not in results:
      continue
    sw = results[test]
    title, xlabel = _TITLES[test]
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    ax.plot(sw["x"], sw["input"], "k--", label="input (no magnification)")
    for label in results["magnifiers"]:
      ax.plot(sw["x"], sw[label], "o-", ms=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("SSIM")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths[test] = os.path.join(out_dir, f"synthetic_protocol_{test}.png")
    fig.savefig(paths[test])
    plt.close(fig)
  return paths
