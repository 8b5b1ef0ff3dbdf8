"""The bench's output: peak memory, a readable table, the JSON file, and errors as one line
(what is in the results: runner.py)."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence


def peak_memory(compiled: Any, devices: Sequence[Any]) -> dict[str, Any]:
    """Peak bytes of one device: the runtime's high-water mark if kept, else the compiler's.

    Returns:
      {"peak_bytes", "source", "compiled": {argument/output/temp/alias bytes} or None}.
    """
    analysis = None
    try:
        mem = compiled.memory_analysis()
        if mem is not None:
            analysis = {k: int(getattr(mem, f"{k}_size_in_bytes"))
                        for k in ("argument", "output", "temp", "alias")}
    except Exception:  # not every backend implements it
        pass
    stats = [d.memory_stats() or {} for d in devices]
    peaks = [s["peak_bytes_in_use"] for s in stats if "peak_bytes_in_use" in s]
    if peaks:
        return {"peak_bytes": int(max(peaks)), "source": "device.memory_stats()",
                "compiled": analysis}
    if analysis is not None:
        # Donated state aliases the outputs, so those bytes are not needed twice.
        total = (analysis["argument"] + analysis["output"] + analysis["temp"]
                 - analysis["alias"])
        return {"peak_bytes": int(total), "source": "compiled.memory_analysis()",
                "compiled": analysis}
    return {"peak_bytes": None, "source": "unavailable", "compiled": None}


def _si(x: float | None, unit: str) -> str:
    if x is None:
        return "n/a"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def format_report(r: dict[str, Any]) -> str:
    """The results as a readable table (the JSON holds the same numbers and every step time)."""
    s = r["setup"]
    fb = r["flops_breakdown"]
    parts = ", ".join(f"{k} {100 * fb[k] / fb['total']:.0f}%" for k in fb if k != "total")
    times = r["step_times_s"]
    mem = r["memory"]
    mem_s = ("n/a" if mem["peak_bytes"] is None
             else f"{mem['peak_bytes'] / 2**30:.2f} GiB per device ({mem['source']})")
    lines = [
        f"bertjax bench   jax {r['jax_version']}   {r['backend']}: {r['device_kind']} x "
        f"{r['num_devices']}   mesh {r['mesh']}",
        f"model {s['preset']} ({s['layers']}x{s['hidden']}, {s['heads']} heads, "
        f"{s['num_params'] / 1e6:.1f}M params)   batch {s['batch']} x seq {s['seq_len']}, "
        f"{s['max_predictions']} predictions   {s['dtype']}   attention "
        f"{s['attention_impl_resolved']}   "
        f"dropout hidden {s['hidden_dropout']} attention {s['attention_dropout']}   "
        f"{s['optimizer']}",
        f"  compile        {r['compile_s']:.1f} s AOT (lower {r['lower_s']:.1f} s + XLA compile "
        f"{r['xla_compile_s']:.1f} s)",
        f"  step time      median {r['step_time_s'] * 1e3:.1f} ms (min {min(times) * 1e3:.1f}, "
        f"max {max(times) * 1e3:.1f}; {len(times)} steps after {s['warmup']} warm-up)",
        f"  throughput     {r['sequences_per_s']:.1f} seq/s   {r['tokens_per_s']:,.0f} tokens/s",
        f"  model FLOPs    {_si(r['flops_per_step'], 'FLOP')}/step ({parts})",
        f"  achieved       {_si(r['achieved_flops_per_s'], 'FLOP/s')} = "
        f"{100 * r['mfu']:.1f}% of {r['peak_reference']}",
        f"  matmul peak    {_si(r['measured_matmul_flops_per_s'], 'FLOP/s')} measured "
        f"(achieved = {100 * r['fraction_of_measured_matmul']:.1f}% of it)",
        f"  peak memory    {mem_s}",
    ]
    if "compare" in r:
        mfu = r["table_peak_flops_per_s"] is not None  # an MFU column where a datasheet exists
        lines += ["", f"  {'system':<14}{'compile s':>10}{'step ms':>10}{'tokens/s':>11}"
                      f"{'FLOP/step':>12}{'FLOP/s':>12}{'% matmul':>10}"
                      + (f"{'MFU':>8}" if mfu else "") + f"{'bertjax/x':>11}"]
        rows = [dict(r, name="bertjax", bertjax_tokens_ratio=1.0)] + list(r["compare"].values())
        for x in rows:
            comp = "n/a" if x["compile_s"] is None else f"{x['compile_s']:.1f}"
            lines.append(
                f"  {x['name']:<14}{comp:>10}{x['step_time_s'] * 1e3:>10.1f}"
                f"{x['tokens_per_s']:>11,.0f}{_si(x['flops_per_step'], ''):>12}"
                f"{_si(x['achieved_flops_per_s'], ''):>12}"
                f"{100 * x['fraction_of_measured_matmul']:>9.1f}%"
                + (f"{100 * x['mfu']:>7.1f}%" if mfu else "")
                + f"{x['bertjax_tokens_ratio']:>10.2f}x")
        for x in rows[1:]:
            lines.append(f"  {x['name']}: {x['note']}")
        for name, err in r.get("compare_failed", {}).items():
            lines.append(f"  {name}: FAILED {err}")
    return "\n".join(lines)


def error_line(e: BaseException) -> str:
    """An exception as one short line for the report."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:300]}"


def write_json(results: dict[str, Any], path: str) -> None:
    """Writes the results (numbers as plain floats) to ``path``, creating its directory;
    through a temporary file and a rename, so ``path`` is never half-written."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1, default=float)
        f.write("\n")
    os.replace(tmp, path)
