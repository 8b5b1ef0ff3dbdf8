"""bertjax.plan: the real train step compiled for a TPU slice on this CPU machine, its memory
figures (the same numbers as the pre-training loop's), the verdict and the knob search, the
collectives of the compiled program, and the command's one-line errors."""

import dataclasses
import os

import jax
import pytest

from bertjax import config as config_lib
from bertjax import train
from bertjax.bench import plan as plan_lib
from tests import commands

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "partition_specs_tiny_2x2x2.txt")
needs_libtpu = pytest.mark.skipif(
    not plan_lib.tpu_available(),
    reason="libtpu is not installed (CI installs it: pip install -c constraints.txt -r "
           "requirements-tpu.txt)")


def _small(c=None):
    c = config_lib.base_config() if c is None else c
    c.max_seq_length, c.max_predictions, c.global_batch_size = 32, 5, 16
    c.data.source, c.progress_bar = "synthetic", False
    return c


@needs_libtpu
def test_tiny_step_compiles_for_a_tpu_slice_with_the_golden_partition_specs():
    tgt = plan_lib.target("v5e:2x4")
    assert len(tgt.devices) == 8 and tgt.kind == "TPU v5 lite" and tgt.platform == "tpu"
    # the compiler's own figure for a 16 GB chip, read from its refusal of a program too big
    assert 15 * 2**30 < tgt.capacity_bytes <= 16 * 2**30
    c = _small()  # vocabulary and sizes as in the golden table: only the batch is smaller
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
    plan = plan_lib.make_plan(c, tgt)
    first = plan.first
    assert first.compiled is not None and plan.fits and plan.trials == []
    assert {d.platform for d in first.compiled.input_shardings[0][0].step.device_set} == {"tpu"}
    params = first.compiled.input_shardings[0][0].params
    rows = [f"{jax.tree_util.keystr(p)}  {tuple(s.spec)}"
            for p, s in jax.tree_util.tree_flatten_with_path(params)[0]]
    with open(GOLDEN) as f:
        assert "\n".join(rows) + "\n" == f.read()
    # the parameters' share of the compiler's arguments is what their shardings say
    m = first.memory
    assert first.sizes["parameters"] + first.sizes["optimizer state"] <= m["argument"]
    assert m["alias"] > 0  # the donated state is updated in place
    # fsdp and tensor splits: the step gathers weights and reduces gradients across devices
    kinds = {c["kind"] for c in plan.collectives}
    assert "all-reduce" in kinds or "reduce-scatter" in kinds, plan.collectives
    assert all(c["per_step"] >= c["ops"] >= 1 and c["bytes"] > 0 for c in plan.collectives)
    # the estimate: optimal_seconds corrected, and consistent with the counted work
    tm = plan.time
    assert tm["raw"] is not None and tm["seconds"] is not None and tm["loops"] == []
    assert tm["seconds"] >= 0.5 * tm["bytes"] / tgt.hbm_bytes_per_s
    text = plan_lib.format_plan(plan, "tiny")
    assert "verdict: fits with" in text and "implied MFU" in text
    assert "| v5e:2x4 | 2×2×2, 1 |" in plan_lib.markdown_row(plan, "tiny")


@pytest.mark.slow
@needs_libtpu
def test_micro_step_estimate_extrapolated_from_two_layers_matches_a_direct_compile():
    """XLA costs a loop body once; the plan times a step with loops by loop-free 1- and
    2-layer compiles. For 4 layers that extrapolation must agree with the 4-layer compile."""
    tgt = plan_lib.target("v5e:2x2")
    c = _small()
    c.max_seq_length, c.max_predictions, c.global_batch_size = 64, 10, 64
    c.model.dtype, c.model.num_layers, c.accum_steps = "bfloat16", 4, 2
    micro = plan_lib.micro_estimate(c, tgt)
    assert micro is not None and micro["micro_batch"] == 32 and micro["per_layer"] > 0
    assert 0 < micro["update"] < micro["micro"]
    assert micro["seconds"] == pytest.approx(2 * micro["micro"] - micro["update"])
    direct = plan_lib.compile_step(
        plan_lib.with_changes(c, accum_steps=1, global_batch_size=32), tgt.devices)
    est = plan_lib.estimate_seconds(direct.compiled)
    assert est["loops"] == [] and est["seconds"] > 0
    assert micro["micro"] == pytest.approx(est["seconds"], rel=0.1)
    # and the step with the loop: its own estimate counts the micro-batch loop's body once
    looped = plan_lib.estimate_seconds(plan_lib.compile_step(c, tgt.devices).compiled)
    assert looped["loops"] == [2] and looped["flops"] < 0.75 * 2 * est["flops"]
    # the looped program's own cycles, with the loop's trips, agree with the loop-free estimate
    assert looped["cycles"]["seconds"] == pytest.approx(micro["seconds"], rel=0.3)
    # at the looped program's clock the loop-free compiles count the same kind of figure: the
    # direct 4-layer compile's cycles at that clock, and the looped program's own step time
    clock = looped["cycles"]["clock_hz"]
    at_clock = plan_lib.micro_estimate(c, tgt, clock)
    assert at_clock["clock_hz"] == clock and at_clock["per_layer"] > 0
    assert at_clock["micro"] == pytest.approx(est["cycles"]["cycles"] / clock, rel=0.1)
    assert at_clock["seconds"] == pytest.approx(looped["cycles"]["seconds"], rel=0.3)


def test_cpu_plan_memory_equals_the_pretraining_loops(tmp_path, monkeypatch, capsys):
    """The figures the plan reports for the CPU backend are the loop's compiled step's."""
    from bertjax import loop

    seen = []

    class Compiled(Exception):
        pass

    def spy(mem):
        seen.append((mem, real_line(mem)))
        raise Compiled  # the loop has compiled its step: nothing to train

    real_line = train.memory_line
    monkeypatch.setattr(train, "memory_line", spy)
    with pytest.raises(Compiled):
        loop.run(_small(), str(tmp_path / "run"))
    monkeypatch.setattr(train, "memory_line", real_line)
    [(loop_memory, loop_line)] = seen

    plan = plan_lib.make_plan(_small(), plan_lib.target("cpu"), search=False)
    assert plan.first.memory == loop_memory
    assert loop_line in plan_lib.format_plan(plan)
    assert loop_memory["argument"] >= plan.first.sizes["parameters"] > 0


def test_a_config_that_cannot_fit_gets_the_verdict_and_a_knob_value_that_fits():
    c = _small()
    c.global_batch_size, c.max_seq_length = 256, 64  # activations dominate the temporaries
    tgt = plan_lib.target("cpu")
    first = plan_lib.compile_step(c, tgt.devices)
    # a device one byte too small for this step
    small = dataclasses.replace(tgt, capacity_bytes=first.total_bytes() - 1)
    plan = plan_lib.make_plan(c, small, max_tries=2, first=first)
    assert not plan.fits
    fitting = [t for t in plan.trials if t.result is not None and t.result.fits(
        small.capacity_bytes)]
    assert fitting, [(t.knob, t.value, t.result and t.result.total_bytes()) for t in plan.trials]
    knob = fitting[0]
    assert knob.knob == "accum_steps" and knob.value == 2
    assert knob.result.memory["temp"] < first.memory["temp"]  # half the rows at a time
    line = plan_lib.verdict(plan)
    assert line.startswith("verdict: does not fit") and "--config.accum_steps=2" in line


@needs_libtpu
def test_a_state_the_tpu_compiler_refuses_is_split_over_fsdp_in_the_search():
    """The TPU compiler refuses a step over the chip's HBM (RESOURCE_EXHAUSTED): the plan reads
    the refusal as the verdict, and since parameters and optimizer state alone are over the
    capacity, it tries only splitting them (fsdp), each try needing less."""
    c = _small()
    c.model.vocab_size = 12_000_000  # word embeddings and their LAMB moments: 17 GiB a device
    plan = plan_lib.make_plan(c, plan_lib.target("v5e:2x2"), max_tries=3)
    first = plan.first
    assert first.compiled is None and "RESOURCE_EXHAUSTED" in first.oom
    assert first.required_bytes > 0 and first.total_bytes() > plan.target.capacity_bytes
    assert not plan.fits and [(t.knob, t.value) for t in plan.trials] == [
        ("mesh.fsdp", 2), ("mesh.fsdp", 4)]
    totals = [first.total_bytes()] + [t.result.total_bytes() for t in plan.trials]
    assert totals == sorted(totals, reverse=True)
    assert plan_lib.verdict(plan).startswith("verdict: does not fit (needs ")


def test_collectives_count_loop_trips_and_bytes():
    # the layout of a compiled TPU program: loops without a known_trip_count, their count in
    # the condition (counter < constant); a loop nested in a loop; an asynchronous pair
    hlo = """HloModule m, entry_computation_layout={()->f32[8]{0}}

%cond (c.1: (s32[], f32[8])) -> pred[] {
  %k = s32[]{:T(128)} constant(64)
  %c.1 = (s32[]{:T(128)}, f32[8]{0}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%c.1), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %k), direction=LT, metadata={op_name="x"}
}

%inner_cond (c.2: (s32[], f32[8])) -> pred[] {
  %c.2 = (s32[]{:T(128)}, f32[8]{0}) parameter(0)
  %n = s32[]{:T(128)} constant(12)
  %j = s32[]{:T(128)} get-tuple-element(%c.2), index=0
  ROOT %lt.2 = pred[]{:T(512)} compare(%j, %n), direction=LT
}

%inner (p.2: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p.2 = (s32[], f32[8]{0}) parameter(0)
  %ar.2 = bf16[4,8]{1,0:T(8,128)} all-reduce(bf16[4,8]{1,0} %z), channel_id=3, to_apply=%add
}

%body (p: (s32[], f32[8])) -> (s32[], /*index=1*/f32[8]) {
  %p = (s32[], f32[8]{0}) parameter(0)
  %ar = f32[8]{0} all-reduce(f32[8]{0} %x), channel_id=1, to_apply=%add
  %ags = (bf16[4]{0}, bf16[16]{0}) all-gather-start(bf16[4]{0} %y), dimensions={0}
  %agd = bf16[16]{0} all-gather-done((bf16[4]{0}, bf16[16]{0}) %ags)
  %w.2 = (s32[], f32[8]{0}) while(%t), condition=%inner_cond, body=%inner
}

ENTRY %main () -> f32[8] {
  %w = (s32[], f32[8]{0}) while((s32[], f32[8]{0}) %init), condition=%cond, body=%body
  %rs = f32[2]{0} reduce-scatter(f32[8]{0} %g), dimensions={0}, to_apply=%add
  %cp = (f32[2]{0}, u32[]) collective-permute-start(f32[2]{0} %rs), source_target_pairs={{0,1}}
  ROOT %cpd = f32[2]{0} collective-permute-done((f32[2]{0}, u32[]) %cp)
}
"""
    rows = {r["kind"]: r for r in plan_lib.collectives(hlo)}
    assert rows["all-reduce"] == {"kind": "all-reduce", "ops": 2,
                                  "per_step": 64 + 64 * 12, "bytes": 64 * 32 + 64 * 12 * 64}
    assert rows["all-gather"] == {"kind": "all-gather", "ops": 1, "per_step": 64,
                                  "bytes": 64 * 32}
    assert rows["reduce-scatter"] == {"kind": "reduce-scatter", "ops": 1, "per_step": 1,
                                      "bytes": 8}
    assert rows["collective-permute"]["per_step"] == 1 and rows["collective-permute"][
        "bytes"] == 8
    assert sorted(plan_lib.loop_trips(hlo)) == [12, 64]
    known = hlo.replace("body=%body", 'body=%body, backend_config={"known_trip_count":{"n":"3"}}')
    assert sorted(plan_lib.loop_trips(known)) == [3, 12]


@pytest.mark.parametrize("args, message", [
    (["--topology=v5e-16"], "expected GENERATION:SHAPE"),
    (["--topology=cpu:0"], "expected cpu or cpu:N with N >= 1"),
    (["--topology=cpu", "--config.mesh.tensor=3"], "not divisible by the fixed axes' product 3"),
    (["--topology=cpu", "--speed"], "--speed on --topology=cpu: only the TPU compiler estimates"),
])
def test_bad_inputs_are_one_line(args, message):
    r = commands.run("plan", *args, timeout=120)
    commands.assert_one_error(r, message)


def test_without_libtpu_a_tpu_topology_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(plan_lib, "tpu_available", lambda: False)
    with pytest.raises(plan_lib.PlanError, match=r"needs libtpu .*bertjax\[tpu\]"):
        plan_lib.target("v5e:2x2")


@pytest.mark.slow
@needs_libtpu
def test_speed_search_finds_fewer_larger_micro_batches_faster_and_prints_their_overrides():
    """--speed: from 2 rows a device a micro-batch (accum 4), the compiler's step time falls
    as the rows grow, so the search keeps doubling them; every candidate is a real compile
    that fits, and the fastest is printed with the overrides that give it."""
    from bertjax.bench import search
    tgt = plan_lib.target("v5e:2x4")
    c = _small()
    c.global_batch_size, c.accum_steps, c.model.dtype = 64, 4, "bfloat16"
    given = plan_lib.compile_step(c, tgt.devices)
    found = search.search_speed(c, tgt, max_compiles=6, given=given)
    first, best = found.candidates[0], found.best
    assert first.overrides == {} and first.seconds > 0
    assert best is not None and best.seconds < first.seconds
    assert best.overrides.get("accum_steps") == 0
    assert best.overrides["micro_batch_per_device"] >= 4  # 2 rows were the config's
    tried = [cand.overrides for cand in found.candidates]
    assert {"rng_impl": "rbg"}.items() <= {k: v for o in tried for k, v in o.items()}.items()
    assert all(cand.result is not None for cand in found.candidates)
    text = search.format_search(found)
    print(text)
    assert text.startswith(f"speed search: {len(found.candidates) - 1} compiles in")
    assert f"fastest: {best.flags()}" in text and "--config.micro_batch_per_device=" in text

