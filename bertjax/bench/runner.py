"""One benchmark invocation: the shape and numerics set on a run config, every participant
timed in interleaved rounds, and the results as one JSON-ready dict.

``check_outputs`` refuses a --json or --profile_dir that could not be written;
``apply_overrides`` checks the flags' values (``--batch=0`` is refused, not read as "the
config's") and sets them on the config; ``run`` builds bertjax's step and the matmul reference
(timing.py), with ``compare`` transformers' peers too (compare.py, imported only then: what
this module imports needs no torch or TensorFlow), times them all in the same rounds,
optionally traces a few more bertjax steps (profile.py), and turns the times into throughput,
FLOP/s against a peak (flops.py) and memory (report.py). What each number means:
the command's docstring, __main__.py.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import jax

from bertjax import config as config_lib
from bertjax import model as model_lib
from bertjax import progress
from bertjax import sharding
from bertjax.bench import flops as flops_lib
from bertjax.bench import profile as profile_lib
from bertjax.bench import report
from bertjax.bench import timing

DTYPES = ("float32", "bfloat16")
PROFILE_STEPS = 3  # steps traced after the timed ones with profile_dir
MIN_SEQ_LEN = 8  # the shortest packed sequence (pairs_per_row's unit)


def resolved_attention(cfg: model_lib.BertConfig) -> str:
    """The attention implementation a training step runs (model.py resolves "auto" so)."""
    if cfg.attention_impl != "auto":
        return cfg.attention_impl
    return "explicit" if cfg.attention_dropout > 0 else "xla"


def default_max_predictions(seq_len: int) -> int:
    """BERT's masked positions per sequence: 20 per 128 tokens (128 -> 20, 512 -> 80)."""
    return max(1, min(seq_len, round(seq_len * 20 / 128)))


def apply_overrides(config: Any, *, preset: str | None = None, batch: int | None = None,
                    seq_len: int | None = None, max_predictions: int | None = None,
                    dtype: str | None = None, attention_impl: str | None = None,
                    mesh: str | None = None, optimizer: str | None = None,
                    accum_steps: int = 1, steps: int = 1, pairs_per_row: int = 1) -> Any:
    """Sets the benchmark's shape and numerics on a run config (in place) and returns it.
    A value of None leaves the config's; any other is checked (``--batch=0`` is refused, not
    read as "the config's").

    Raises:
      config_lib.ConfigError: one line naming the bad value and the fix, before any compile.
    """
    for flag, value, least, what in (
            ("--batch", batch, 1, "sequences per step"),
            ("--seq_len", seq_len, MIN_SEQ_LEN, "tokens per sequence"),
            ("--max_predictions", max_predictions, 1, "masked positions per sequence"),
            ("--accum_steps", accum_steps, 1, "micro-batches per step")):
        if value is not None and value < least:  # 0 is a value, not "the config's"
            raise config_lib.ConfigError(f"{flag}={value}; expected {what} >= {least} "
                                         "(leave the flag out for the config's value)")
    if preset:
        config.model.preset = preset
    if batch is not None:
        config.global_batch_size = batch
    if seq_len is not None:
        config.max_seq_length = seq_len
        config.max_predictions = default_max_predictions(seq_len)
    if max_predictions is not None:
        config.max_predictions = max_predictions
    if dtype:
        if dtype not in DTYPES:
            raise config_lib.ConfigError(f"--dtype={dtype!r}; expected one of {DTYPES}")
        config.model.dtype = dtype
    if attention_impl:
        config.model.attention_impl = attention_impl
    if mesh:
        try:
            config.mesh.data, config.mesh.fsdp, config.mesh.tensor = (int(x) for x in
                                                                      mesh.split(","))
        except ValueError:
            raise config_lib.ConfigError(
                f"--mesh={mesh!r}; expected three integers data,fsdp,tensor such as 1,1,1 or "
                "-1,1,1") from None
    if optimizer:
        config.optim.name = optimizer
    if not 1 <= pairs_per_row <= config.max_seq_length // 8:  # >= 8 tokens per sequence
        raise config_lib.ConfigError(f"--pairs_per_row={pairs_per_row}; expected 1 (one sequence "
                                     f"per row) to {config.max_seq_length // 8}")
    config.data.pairs_per_row = pairs_per_row  # packed only when asked, unlike bert_tiny
    config.accum_steps = accum_steps
    # The schedule only needs to outlast the run; its values do not change the step's cost.
    config.total_steps = max(config.total_steps, steps)
    config.optim.warmup_steps = min(config.optim.warmup_steps, config.total_steps)
    impl = config.model.attention_impl
    if impl in ("xla", "cudnn") and config.model.attention_dropout > 0:
        raise config_lib.ConfigError(
            f"--attention_impl={impl} has no attention dropout but model.attention_dropout="
            f"{config.model.attention_dropout}; add --config.model.attention_dropout=0")
    return config


def check_outputs(json_path: str | None, profile_dir: str | None) -> None:
    """Refuses, before anything runs, a --json that cannot be written as a file and a
    --profile_dir that is a file (one line each; the run would fail only at its end)."""
    if json_path:
        parent = os.path.dirname(os.path.abspath(json_path))
        if os.path.isdir(json_path):
            raise config_lib.ConfigError(f"--json={json_path} is a directory; give a file name "
                                         "such as bench.json")
        existing = parent
        while not os.path.exists(existing):  # write_json creates the missing directories
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise config_lib.ConfigError(f"--json={json_path}: {existing} is a file, not a "
                                         "directory; choose another path")
    if profile_dir and os.path.exists(profile_dir) and not os.path.isdir(profile_dir):
        raise config_lib.ConfigError(f"--profile_dir={profile_dir} is a file; give a "
                                     "directory (it is created when missing)")


def _summary(s: timing.System, peak: float | None, matmul_flops_per_s: float) -> dict[str, Any]:
    med = s.median_s
    achieved = s.flops_per_step / med
    return {
        "name": s.name, "compile_s": s.compile_s, "step_time_s": med,
        "step_times_s": list(s.times), "sequences_per_s": s.sequences_per_step / med,
        "tokens_per_s": s.tokens_per_step / med, "flops_per_step": s.flops_per_step,
        "achieved_flops_per_s": achieved,
        "mfu": achieved / peak if peak else None,
        "fraction_of_measured_matmul": achieved / matmul_flops_per_s,
        "note": s.note,
    }


def run(config: Any, steps: int, warmup: int, compare: bool = False,
        matmul_size: int = 0, torch_compile: bool = True,
        profile_dir: str | None = None) -> dict[str, Any]:
    """Runs the benchmark for a config prepared by ``apply_overrides``.

    Args:
      config: the run config (shape, model, optimizer, mesh).
      steps, warmup: timed and untimed steps per participant.
      compare: also time transformers' Flax and torch BERT (imports them).
      matmul_size: the reference matmul's side (0: 2048 on CPU, 8192 elsewhere).
      torch_compile: with ``compare``, also try torch.compile.
      profile_dir: if set, PROFILE_STEPS more bertjax steps are traced there by jax.profiler
        (TensorBoard / Perfetto), after the timed ones so the tracing does not slow them, and
        summarised by profile.py (device busy share, time by kind, top kernels).

    Returns:
      The results as a JSON-ready dict (see ``report.format_report`` for what is in it).

    Raises:
      config_lib.ConfigError: a bad config, before anything is built.
    """
    mesh_shape = config_lib.validate(config, jax.device_count())
    if steps < 1 or warmup < 0:
        raise config_lib.ConfigError(f"--steps={steps}, --warmup={warmup}; expected steps >= 1 "
                                     "and warmup >= 0")
    if matmul_size < 0:
        raise config_lib.ConfigError(f"--matmul_size={matmul_size}; expected a positive side "
                                     "of the reference matmul, or 0 for the default")
    check_outputs(None, profile_dir)
    backend = jax.default_backend()
    device = jax.devices()[0]
    cfg = config_lib.model_config(config)
    ours, info = timing.bertjax_system(config, mesh_shape)
    timing.warm_up(ours, warmup)
    memory = report.peak_memory(info["compiled"], info["devices"])  # before anything else allocates
    n_dev = len(info["devices"])
    size = matmul_size or (2048 if backend == "cpu" else 8192)
    matmul = timing.matmul_system(size, cfg.dtype, device)  # the dtype the model's matmuls run in
    timing.warm_up(matmul, 1)
    systems, failed = [ours, matmul], {}
    if compare:
        from bertjax.bench import compare as compare_lib  # imports transformers and torch
        built, failed = compare_lib.systems(config, cfg, info["host_batches"], torch_compile)
        for other in built:
            try:
                timing.warm_up(other, warmup)
                systems.append(other)
            except Exception as e:  # e.g. torch.compile without a working C++ toolchain
                failed[other.name] = report.error_line(e)
    with progress.bar(steps, "round", "bench") as bar:  # a round: one step of every system
        timing.time_rounds(systems, steps, on_round=bar.update)
    profile = None
    if profile_dir:
        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
            timing.warm_up(ours, PROFILE_STEPS)
        try:
            profile = profile_lib.summarize(
                profile_lib.load_events(profile_lib.find_trace(profile_dir)))
        except (OSError, ValueError) as e:  # the timings stand without the summary
            profile = {"devices": [], "error": report.error_line(e)}

    # On a CPU the (fake) devices share the host's cores: the host matmul rate is the peak.
    # On accelerators each device brings its own peak.
    matmul_one = matmul.flops_per_step / matmul.median_s
    matmul_rate = matmul_one * (1 if backend == "cpu" else n_dev)
    # a device's peak: a TPU7x chip is two devices
    table = flops_lib.device_peak_flops(jax.devices()) if backend != "cpu" else None
    peak = table * n_dev if table else matmul_rate
    reference = (f"{device.device_kind} bf16 datasheet peak {table / 1e12:.0f} TFLOP/s x {n_dev}"
                 if table else f"measured {matmul.note}" + (f" x {n_dev}" if n_dev > 1 and
                                                             backend != "cpu" else ""))
    results = {
        "jax_version": jax.__version__, "backend": backend, "device_kind": device.device_kind,
        "num_devices": n_dev, "host": platform.node(),
        "mesh": dict(zip(sharding.MESH_AXES, mesh_shape)),
        "setup": {
            "preset": config.model.preset, "layers": cfg.num_layers, "hidden": cfg.hidden_size,
            "heads": cfg.num_heads, "vocab": cfg.vocab_size, "batch": config.global_batch_size,
            "seq_len": config.max_seq_length, "max_predictions": config.max_predictions,
            "dtype": cfg.dtype, "attention_impl": cfg.attention_impl,
            "attention_impl_resolved": resolved_attention(cfg),
            "hidden_dropout": cfg.hidden_dropout, "attention_dropout": cfg.attention_dropout,
            "optimizer": config.optim.name, "accum_steps": config.accum_steps,
            "steps": steps, "warmup": warmup, "num_params": info["num_params"],
        },
        # compile_s (below, as for every system) = lower_s + xla_compile_s.
        "lower_s": info["lower_s"], "xla_compile_s": info["compile_s"],
        "flops_breakdown": info["flops"],
        "peak_flops_per_s": peak, "peak_reference": reference,
        "table_peak_flops_per_s": table * n_dev if table else None,
        "measured_matmul_flops_per_s": matmul_rate,
        "memory": memory,
        "final_loss": float(info["stepper"].metrics["loss"]),
        "profile": profile, "profile_steps": PROFILE_STEPS if profile_dir else None,
    }
    results.update(_summary(ours, peak, matmul_rate))
    if compare:
        # The other systems run on one device.
        results["compare"] = {s.name: _summary(s, table, matmul_one) for s in systems
                              if s is not ours and s is not matmul}
        results["compare_failed"] = failed
        for r in results["compare"].values():
            r["bertjax_tokens_ratio"] = results["tokens_per_s"] / r["tokens_per_s"]
    return results
