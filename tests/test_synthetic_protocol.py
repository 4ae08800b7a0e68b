"""The synthetic magnification protocol (Oh et al. 2018) on tiny sizes: structure, determinism, the
input reference line, and that the classical methods behave as the protocol expects."""
from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest

from magplus_jax.evaluation import synthetic_protocol as sp
from magplus_jax.models.magnifiers import get_magnifier

# 40 px frames, 3 magnified px (10 px would not fit such a frame), 3 pairs in batches of 2 (so the
# padded last batch is exercised).
SPEC = sp.ProtocolSpec(image_size=40, num_pairs=3, batch_size=2, magnified_px=3.0,
                       motions=(0.1, 0.5), noise_stds=(0.01, 30.0), noise_motion=0.05,
                       noise_alpha=60.0)


@pytest.fixture(scope="module")
def results():
  mags = [get_magnifier(ml_collections.ConfigDict(dict(name=n)))
          for n in ("identity", "eulerian", "phase")]
  return sp.run_protocol(mags, SPEC)


def test_structure_and_reference_line(results):
  assert results["magnifiers"] == ["identity", "eulerian", "phase"]
  sub, noise = results["subpixel"], results["noise"]
  assert sub["x"] == [0.1, 0.5] and noise["x"] == [0.01, 30.0]
  np.testing.assert_allclose(sub["alpha"], [30.0, 6.0])
  assert noise["alpha"] == [60.0, 60.0] and noise["motion"] == [0.05, 0.05]
  for sweep in (sub, noise):
    for key in ("input", "identity", "eulerian", "phase"):
      assert len(sweep[key]) == len(sweep["x"])
      assert all(-1.0 <= v <= 1.0 for v in sweep[key])
    # Identity outputs the input frame: its score is the reference line, exactly.
    np.testing.assert_allclose(sweep["identity"], sweep["input"], atol=1e-6)


def test_classical_methods_behave(results):
  # Measured (40 px, 3 pairs): input 0.745 / 0.785, eulerian 0.824 / 0.842, phase 0.781 / 0.811;
  # noise 30/255 at alpha 60: input 0.397, eulerian 0.028, phase 0.271.
  sub, noise = results["subpixel"], results["noise"]
  for method in ("eulerian", "phase"):
    assert min(np.subtract(sub[method], sub["input"])) > 0.01, method
    assert noise[method][0] > noise["input"][0] + 0.01, method
    # Heavy noise amplified 60x destroys the result: below doing nothing.
    assert noise[method][1] < noise["input"][1], method
  assert noise["eulerian"][1] < noise["phase"][1]  # phase is the more noise-robust one


def test_pairs_are_deterministic_and_shared_across_a_sweep():
  a = sp.make_pair(SPEC, 0.1, 30.0, 0.0, index=1)
  b = sp.make_pair(SPEC, 0.1, 30.0, 0.0, index=1)
  c = sp.make_pair(SPEC, 0.5, 6.0, 0.0, index=1)  # same magnified motion: same scene and truth
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  np.testing.assert_array_equal(a[0], c[0])
  np.testing.assert_allclose(a[2], c[2], atol=1e-5)
  assert np.abs(a[1] - c[1]).mean() > 1e-3  # the input frames do differ
  other = sp.make_pair(SPEC, 0.1, 30.0, 0.0, index=2)
  assert np.abs(other[0] - a[0]).mean() > 1e-2
  noisy = sp.make_pair(SPEC, 0.1, 30.0, 10.0, index=1)
  assert 0.02 < np.std(noisy[0] - a[0]) < 0.06 and np.array_equal(noisy[2], a[2])


def test_write_report(results, tmp_path):
  paths = sp.write_report(results, str(tmp_path))
  assert set(paths) == {"json", "markdown", "subpixel", "noise"}
  for p in paths.values():
    assert os.path.getsize(p) > 100
  with open(paths["subpixel"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  table = open(paths["markdown"]).read()
  assert "Sub-pixel test" in table and "Noise test" in table
  assert "| input | identity | eulerian | phase |" in table
  assert json.load(open(paths["json"]))["subpixel"]["x"] == [0.1, 0.5]


def test_bad_spec_raises():
  with pytest.raises(ValueError, match="border"):
    sp.ProtocolSpec.from_config(dict(image_size=20))
  with pytest.raises(ValueError, match="motions"):
    sp.ProtocolSpec.from_config(dict(motions=(0.0, 1.0)))
  with pytest.raises(ValueError, match="unknown"):
    sp.run_protocol([], SPEC, tests=("blur",))
