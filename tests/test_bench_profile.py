"""bertjax.bench.profile: busy time as a union of intervals, kinds, top kernels, file lookup."""

import gzip
import json

import pytest

from bertjax.bench import profile


def _trace():
    meta = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7"}},
        {"ph": "M", "pid": 1, "tid": 8, "name": "thread_name", "args": {"name": "Stream #8"}},
        {"ph": "M", "pid": 1, "tid": 9, "name": "thread_name", "args": {"name": "XLA Ops"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
    ]
    x = lambda pid, tid, ts, dur, name: {"ph": "X", "pid": pid, "tid": tid, "ts": ts,
                                         "dur": dur, "name": name}
    events = [
        x(1, 7, 0, 60, "sm90_xmma_gemm_bf16bf16_bf16f32"),  # 0..60
        x(1, 8, 50, 20, "loop_threefry2x32_fusion"),  # 50..70 overlaps the gemm by 10
        x(1, 7, 100, 30, "input_reduce_fusion"),  # 100..130: a gap of 30 before it
        x(1, 7, 130, 10, "loop_multiply_fusion"),
        x(1, 9, 0, 140, "fusion.1"),  # the op-level line repeats the kernels: ignored
        x(2, 3, 0, 1000, "host work"),  # not a device
    ]
    return {"traceEvents": meta + events}


def test_busy_is_the_union_and_kinds_split_the_kernel_time():
    s = profile.summarize(_trace())
    (dev,) = s["devices"]
    assert dev["name"] == "/device:GPU:0"
    assert dev["window_us"] == 140
    assert dev["busy_us"] == 110  # 0..70 and 100..140; the overlap is counted once
    assert dev["busy_fraction"] == pytest.approx(110 / 140)
    assert dev["kinds"] == {"matmul": 60, "reduction": 30, "rng": 20, "elementwise": 10}
    assert [t[0] for t in dev["top"]][:2] == ["sm90_xmma_gemm_bf16bf16_bf16f32",
                                             "input_reduce_fusion"]
    text = profile.format_summary(s, steps=2)
    assert "busy 0.1 ms = 78.6%" in text and "matmul 50.0%" in text


def test_find_trace_and_main(tmp_path, capsys):
    run = tmp_path / "plugins" / "profile" / "run1"
    run.mkdir(parents=True)
    with gzip.open(run / "perfetto_trace.json.gz", "wt") as f:
        json.dump(_trace(), f)
    assert profile.find_trace(str(tmp_path)).endswith("perfetto_trace.json.gz")
    assert profile.main(["x", str(tmp_path)]) == 0
    assert "sm90_xmma_gemm" in capsys.readouterr().out
    assert profile.main(["x", str(tmp_path / "missing")]) == 2
    assert "no perfetto_trace" in capsys.readouterr().err


def test_a_trace_without_devices_says_so():
    s = profile.summarize({"traceEvents": _trace()["traceEvents"][4:5]})
    assert "no GPU/TPU device events" in profile.format_summary(s)
