"""The real train step compiles ahead of time for a TPU slice (launch/aot_check.py), on this CPU.

The compile tests need the `libtpu` package (`pip install -e ".[tpu]"`) and are skipped without it;
no TPU is used: jax's topology API describes a v5e 2x2 slice and XLA:TPU compiles for it (~40 s
on 2 busy cores). The HLO parsing and argument checks run everywhere.
"""
import pytest

# pylint: disable=wrong-import-position
from launch import aot_check  # noqa: E402  (sets the libtpu environment before jax initialises it)
from magplus_jax import config_lib  # noqa: E402

FSDP_RULES = ((".*kernel", "fsdp"), (".*", "replicate"))
needs_libtpu = [pytest.mark.tpu_aot, pytest.mark.slow]


def tiny_config():
  c = config_lib.base_config()
  c.data.image_size = 32
  c.model.levels = 2
  c.model.width = 8
  c.batch_size = 8
  c.flow.iters = 0  # one-level, one-step Lucas-Kanade: a small program
  c.flow.levels = 1
  c.flow.iters_finest = 1
  c.mesh = (("data", 2), ("fsdp", 2), ("model", 1))
  c.sharding_rules = FSDP_RULES
  return c


@pytest.fixture(scope="module")
def report():
  pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -e '.[tpu]')")
  return aot_check.aot_compile(tiny_config(), "v5e:2x2")


@pytest.mark.tpu_aot
@pytest.mark.slow
def test_compiles_with_memory_and_cost(report):
  assert report["device_kind"] == "TPU v5 lite" and report["chips"] == 4
  assert report["mesh"] == {"data": 2, "fsdp": 2, "model": 1}
  mem = report["memory_per_chip"]
  for key in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "peak_memory_in_bytes"):
    assert mem[key] > 0, key
  # The donated state is aliased to the new state.
  assert 0 < mem["alias_size_in_bytes"] <= mem["argument_size_in_bytes"]
  assert report["hbm_per_chip"] == 16 * 2 ** 30 and report["fits"] is True
  cost = report["cost_per_chip"]
  assert cost["flops"] > 0 and cost["bytes_accessed"] > 0
  assert report["params"] > 0 and report["sharded_state_leaves"] > 0
  # FSDP gathers the sharded kernels and reduces the gradients across the slice.
  coll = report["collectives"]
  assert coll["all-gather"]["count"] > 0
  assert coll["all-reduce"]["count"] + coll["reduce-scatter"]["count"] > 0
  table = aot_check.format_table([report])
  assert "v5e:2x2" in table and "fits" in table


@pytest.mark.tpu_aot
@pytest.mark.slow
def test_bad_topology_and_batch():
  pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -e '.[tpu]')")
  with pytest.raises(ValueError, match="topology"):
    aot_check.topology_devices("v99:1x1")
  c = tiny_config()
  c.batch_size = 6
  with pytest.raises(ValueError, match="batch_size=6"):
    aot_check.aot_compile(c, "v5e:2x2")


def test_count_collectives_parses_hlo():
  hlo = "\n".join([
      "  %all-reduce.1 = f32[3,3,8,8]{3,2,1,0} all-reduce(f32[3,3,8,8]{3,2,1,0} %p), channel_id=1",
      "  %ag = (f32[2,4]{1,0}, f32[8,4]{1,0}) all-gather-start(f32[2,4]{1,0} %x), dimensions={0}",
      "  %agd = f32[8,4]{1,0} all-gather-done((f32[2,4]{1,0}, f32[8,4]{1,0}) %ag)",
      "  ROOT %cp = bf16[16]{0} collective-permute(bf16[16]{0} %y), source_target_pairs={{0,1}}",
      "  %cps = (f32[1,8,3]{2,1,0}, f32[1,8,3]{2,1,0}, u32[]{:S(2)}, u32[]{:S(2)}) "
      "collective-permute-start(%z), channel_id=41, source_target_pairs={{1,0}}",
      "  %cpd = f32[1,8,3]{2,1,0} collective-permute-done(%cps)",
      "  %add = f32[4]{0} add(f32[4]{0} %a, f32[4]{0} %b)",
  ])
  c = aot_check.count_collectives(hlo)
  assert c["all-reduce"] == {"count": 1, "bytes": 3 * 3 * 8 * 8 * 4}
  assert c["all-gather"] == {"count": 1, "bytes": 8 * 4 * 4}
  assert c["collective-permute"] == {"count": 2, "bytes": 32 + 8 * 3 * 4}
  assert c["reduce-scatter"]["count"] == c["all-to-all"]["count"] == 0


def test_parse_mesh():
  assert aot_check.parse_mesh("data:-1,fsdp:4") == (("data", -1), ("fsdp", 4), ("model", 1))
  with pytest.raises(ValueError, match="name:size"):
    aot_check.parse_mesh("data=2")


@pytest.mark.tpu_aot
def test_multi_slice_mesh_puts_slices_on_data():
  pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -e '.[tpu]')")
  from magplus_jax import sharding  # pylint: disable=g-import-not-at-top
  devices = aot_check.topology_devices("v5e:2x2", num_slices=2)
  assert len(devices) == 8 and {d.slice_index for d in devices} == {0, 1}
  mesh = sharding.make_mesh((("data", -1), ("fsdp", 2), ("model", 1)), devices=devices)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "model": 1}
  # Each half of the data axis lies in one slice: only the data-parallel reduction crosses DCN.
  for half in (mesh.devices[:2], mesh.devices[2:]):
    assert len({d.slice_index for d in half.flat}) == 1
  with pytest.raises(ValueError, match="divisible by the number of slices"):
    sharding.make_mesh((("data", 1), ("fsdp", 8), ("model", 1)), devices=devices)
