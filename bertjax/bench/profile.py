"""Where a traced step's device time goes: a text summary of a jax.profiler Perfetto trace.

``python -m bertjax.bench --profile_dir=DIR`` traces a few steps with
``jax.profiler.trace(DIR, create_perfetto_trace=True)``; this module reads the
``perfetto_trace.json.gz`` that leaves (Chrome trace-event JSON) and answers, per device, the
questions a slow step raises first:

  * how busy the device was between its first and last event (idle gaps = host or launch bound);
  * how that busy time splits into kinds of work: matmuls (cuBLAS / CUTLASS / Triton GEMMs,
    dot fusions), attention kernels (cuDNN / flash), random-number generation (threefry, RBG),
    reductions, other elementwise fusions, copies, collectives;
  * the kernels that take the most time.

It needs only the standard library, so a trace fetched from a GPU host can be read anywhere:
``python -m bertjax.bench.profile DIR_OR_FILE``.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
from typing import Any

# Checked in order; the first pattern that matches a kernel's name gives its kind.
KINDS: tuple[tuple[str, str], ...] = (
    ("collective", r"nccl|all-?reduce|all-?gather|reduce-?scatter|collective|all-to-all"),
    ("copy", r"memcpy|memset|copy|transpose"),
    ("attention", r"cudnn|flash|fmha|attention|dot_product"),
    ("rng", r"threefry|rng|random|philox|bit_generator"),
    ("matmul", r"gemm|cublas|cutlass|xmma|wgmma|matmul|\bdot\b|dot_|_dot|triton_gemm|sm90_|"
               r"sm80_|convolution"),
    ("reduction", r"reduce|reduction|norm"),
    ("elementwise", r"fusion|loop_|input_|elementwise|kernel"),
)


def kind_of(name: str) -> str:
    """The kind of work a kernel name suggests ("other" when nothing matches)."""
    low = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, low):
            return kind
    return "other"


def find_trace(path: str) -> str:
    """The newest perfetto_trace.json(.gz) under ``path`` (or ``path`` itself if a file)."""
    if os.path.isfile(path):
        return path
    found = glob.glob(os.path.join(path, "**", "perfetto_trace.json*"), recursive=True)
    if not found:
        raise FileNotFoundError(f"no perfetto_trace.json(.gz) under {path}; trace with "
                                "jax.profiler.trace(dir, create_perfetto_trace=True)")
    return max(found, key=os.path.getmtime)


def load_events(path: str) -> dict[str, Any]:
    """The trace's JSON object (``traceEvents`` ...), from a .json or .json.gz file."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {"traceEvents": data}


def summarize(trace: dict[str, Any], top: int = 25) -> dict[str, Any]:
    """Per device process: window, busy time, busy share by kind, top kernels.

    A "device" is a trace process whose name mentions a GPU or TPU (``/device:GPU:0`` ...);
    within it, each thread is a stream. Busy time is the union of the intervals of all its
    complete ("X") events, so kernels overlapping on several streams are not counted twice;
    the per-kind and per-kernel sums are plain sums of durations.

    Returns:
      {"devices": [{"name", "window_us", "busy_us", "busy_fraction", "kinds": {kind: us},
      "top": [(name, total_us, count, kind)], "events"}]}.
    """
    events = trace.get("traceEvents", [])
    proc_names = {e.get("pid"): e.get("args", {}).get("name", "")
                  for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    thread_names = {(e.get("pid"), e.get("tid")): e.get("args", {}).get("name", "")
                    for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    device_pids = [p for p, n in proc_names.items()
                   if re.search(r"/device:(GPU|TPU)|gpu|tpu", str(n), re.I)]
    out = []
    for pid in sorted(device_pids, key=lambda p: str(proc_names[p])):
        spans, per_name = [], collections.defaultdict(lambda: [0.0, 0])
        for e in events:
            if e.get("pid") != pid or e.get("ph") != "X" or "dur" not in e:
                continue
            thread = thread_names.get((pid, e.get("tid")), "")
            # The op-level and module-level lines repeat the kernels' time at a coarser grain.
            if re.search(r"xla ops|xla modules|steps|framework|launch stats", thread, re.I):
                continue
            start, dur = float(e["ts"]), float(e["dur"])
            spans.append((start, start + dur))
            rec = per_name[e.get("name", "?")]
            rec[0] += dur
            rec[1] += 1
        if not spans:
            continue
        spans.sort()
        busy, cur_start, cur_end = 0.0, spans[0][0], spans[0][1]
        for s, t in spans[1:]:
            if s > cur_end:
                busy += cur_end - cur_start
                cur_start, cur_end = s, t
            else:
                cur_end = max(cur_end, t)
        busy += cur_end - cur_start
        window = max(t for _, t in spans) - spans[0][0]
        kinds: dict[str, float] = collections.defaultdict(float)
        for name, (total, _) in per_name.items():
            kinds[kind_of(name)] += total
        ranked = sorted(per_name.items(), key=lambda kv: -kv[1][0])[:top]
        out.append({
            "name": str(proc_names[pid]), "window_us": window, "busy_us": busy,
            "busy_fraction": busy / window if window else 0.0, "events": len(spans),
            "kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
            "top": [(n, t, c, kind_of(n)) for n, (t, c) in ranked],
        })
    return {"devices": out}


def format_summary(summary: dict[str, Any], steps: int | None = None) -> str:
    """The summary as text; with ``steps``, times are also given per traced step."""
    if not summary["devices"]:
        return "profile: the trace holds no GPU/TPU device events (CPU runs have none)"
    lines = []
    for d in summary["devices"]:
        per = f" ({d['busy_us'] / steps / 1e3:.1f} ms busy per step)" if steps else ""
        lines.append(f"profile {d['name']}: {d['events']} kernels, window "
                     f"{d['window_us'] / 1e3:.1f} ms, busy {d['busy_us'] / 1e3:.1f} ms = "
                     f"{100 * d['busy_fraction']:.1f}%{per}")
        total = sum(d["kinds"].values()) or 1.0
        lines.append("  by kind: " + ", ".join(f"{k} {100 * v / total:.1f}%"
                                              for k, v in d["kinds"].items()))
        lines.append(f"  {'kernel':<72}{'ms':>9}{'share':>7}{'calls':>7}  kind")
        for name, t, c, kind in d["top"]:
            short = name if len(name) <= 70 else name[:67] + "..."
            lines.append(f"  {short:<72}{t / 1e3:>9.2f}{100 * t / total:>6.1f}%{c:>7}  {kind}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bertjax.bench.profile TRACE_DIR_OR_FILE", file=sys.stderr)
        return 2
    try:
        path = find_trace(argv[1])
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summarize(load_events(path))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
