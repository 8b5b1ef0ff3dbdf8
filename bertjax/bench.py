"""Benchmark of the bertjax train step: compile time, step time, throughput, MFU and memory.

    python -m bertjax.bench --config=configs/bert_base.py --batch=16 --seq_len=128 \
        [--dtype=bfloat16] [--attention_impl=cudnn --config.model.attention_dropout=0] \
        [--mesh=1,1,1] [--steps=20 --warmup=5] [--json=bench.json] [--compare]

What is measured, in one process:
  * compile: the AOT ``lower`` and ``compile`` of the real step from ``train.jit_train_step``;
  * step time: the median of ``--steps`` steps after ``--warmup``, each waited for with
    ``block_until_ready``, on numpy synthetic batches already placed on the mesh;
  * model FLOPs per step by ``model_flops`` (one formula, below), the FLOP/s achieved, and that
    as a fraction of a peak: on accelerators the card's dense bf16 peak from ``PEAK_BF16_TFLOPS``
    (MFU); on CPU, where there is no datasheet, a large jitted matmul in the model's compute
    dtype measured in the same invocation, i.e. XLA's own matmul rate on this host (a library
    with better CPU kernels, such as torch's oneDNN on AMX, can exceed it). The matmul is
    measured on every backend and reported beside the table value;
  * peak memory: ``peak_bytes_in_use`` from the device when it keeps statistics (GPU, TPU),
    else the compiled step's ``memory_analysis``.

Timed steps of every participant (the matmul reference too) are interleaved round by round, so
a drift of the machine hits all of them equally and ratios in one invocation stay meaningful.

``--compare`` adds transformers' Flax and torch BertForPreTraining on the same geometry, batches
and optimizer (bench_compare.py). No torch or TensorFlow here: it runs where only JAX is.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from bertjax import config as config_lib
from bertjax import model as model_lib
from bertjax import multihost
from bertjax import sharding
from bertjax import synthetic
from bertjax import train
from bertjax.bench_report import format_report, peak_memory, write_json  # noqa: F401

# Dense bf16 tensor-core peaks (no sparsity) from the vendors' datasheets, per chip, in
# TFLOP/s. Matched as substrings of jax's device_kind, most specific first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM; device_kind "NVIDIA H100 80GB HBM3"
    ("H200", 989.0),  # same chip as the H100 SXM, more memory
    ("A100", 312.0),
)
_DTYPES = ("float32", "bfloat16")
PROFILE_STEPS = 3  # steps traced after the timed ones with --profile_dir


@dataclasses.dataclass
class System:
    """One participant of the timed rounds: a train step of some implementation, or the matmul.

    Attributes:
      name: label in the tables and the JSON.
      step: runs one step and returns once its results are ready (synchronised).
      flops_per_step: model FLOPs of one step (``model_flops``) or of the matmuls.
      tokens_per_step, sequences_per_step: 0 for the matmul.
      compile_s: AOT lower+compile time, or the first call's time where there is no AOT
        (torch.compile), or None.
      note: what differs from bertjax's counting or setup, printed under the table.
      times: seconds of each timed step, filled by ``time_rounds``.
    """

    name: str
    step: Callable[[], None]
    flops_per_step: float
    tokens_per_step: int = 0
    sequences_per_step: int = 0
    compile_s: float | None = None
    note: str = ""
    times: list[float] = dataclasses.field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)


def pretraining_flops(config: Any, training: bool = True) -> dict[str, float]:
    """``model_flops`` of bertjax's pre-training step for a run config: sparse MLM head, and
    the last layer at the masked positions and [CLS]s (unless the layers are scanned)."""
    cfg = config_lib.model_config(config)
    m = config.data.pairs_per_row if config.data.pairs_per_row > 1 else 1
    rows = (config.max_predictions + m if cfg.prune_last_layer and not cfg.scan_layers
            else None)
    return model_flops(cfg, config.global_batch_size, config.max_seq_length,
                       config.max_predictions, training, last_layer_rows=rows)


def model_flops(cfg: model_lib.BertConfig, batch: int, seq_len: int, mlm_positions: int,
                training: bool = True, last_layer_rows: int | None = None) -> dict[str, float]:
    """Model FLOPs of one BERT pre-training step (matmuls only; 1 multiply-add = 2 FLOPs).

    With B = batch, L = seq_len, D hidden, F intermediate, N layers, V vocabulary and
    P = mlm_positions rows given to the MLM head, the forward pass costs:

      encoder_dense  2·(4·D² + 2·D·F)·B·L·N   Q, K, V, attention-output and the two MLP matmuls
                                              (6·N_dense·tokens for training: fwd + bwd = 3×);
      attention      2 · 2·B·L²·D · N         QKᵀ and softmax·V, summed over heads;
      mlm_head       2·(D² + D·V)·B·P         the transform dense and the tied decoder,
                                              at the P rows the head is evaluated on;
      pooler_nsp     2·(D² + 2·D)·B           pooler dense on [CLS] and the 2-way NSP classifier.

    Embedding lookups are gathers, not matmuls, and elementwise work (GELU, LayerNorm, softmax,
    the optimizer) is not counted: this is the usual "model FLOPs" of MFU, so it does not grow
    when an implementation recomputes or adds work. Training multiplies the forward by 3
    (backward = gradients w.r.t. inputs and weights, each a forward's worth), which is exact
    here because every matmul input needs its gradient (it descends from the embeddings).

    bertjax evaluates the MLM head sparsely: P = max_predictions. transformers' BERT evaluates
    it densely over every position: pass P = L to count what it computes.

    bertjax also computes the last encoder layer only at the R rows that are read (the P masked
    positions and the M [CLS]s; ``model.EncoderLayer``): its K and V projections still run on
    all L rows, its Q, attention-output and MLP matmuls and its attention on R rows. Pass
    ``last_layer_rows`` = R for that (``pretraining_flops`` does); None counts the whole layer.

    Args:
      cfg: the model sizes.
      batch, seq_len: B and L (padding tokens included: they are computed).
      mlm_positions: P, rows per sequence the MLM head runs on.
      training: forward + backward (×3) if True, else the forward only.
      last_layer_rows: R, rows per sequence the last layer is computed at (None: all L).

    Returns:
      {"encoder_dense", "attention", "mlm_head", "pooler_nsp", "total"} in FLOPs.
    """
    b, l, p = batch, seq_len, mlm_positions
    d, f, n, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size
    r = l if last_layer_rows is None else last_layer_rows
    passes = 3 if training else 1
    terms = {
        # N-1 whole layers; the last: K, V on L rows, Q, output and the MLP on R rows
        "encoder_dense": 2 * (4 * d * d + 2 * d * f) * b * l * (n - 1)
                         + 2 * (2 * d * d * l + (2 * d * d + 2 * d * f) * r) * b,
        "attention": 2 * (2 * b * l * l * d) * (n - 1) + 2 * (2 * b * r * l * d),
        "mlm_head": 2 * (d * d + d * v) * b * p,
        "pooler_nsp": 2 * (d * d + 2 * d) * b,
    }
    out = {k: float(passes * x) for k, x in terms.items()}
    out["total"] = sum(out.values())
    return out


def table_peak_flops(device_kind: str) -> float | None:
    """The dense bf16 peak FLOP/s of one chip from ``PEAK_BF16_TFLOPS``, or None if unknown."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_kind.lower():
            return tflops * 1e12
    return None


def matmul_system(size: int, dtype: str, device: jax.Device, target_s: float = 0.05) -> System:
    """A jitted ``size``³ matmul on one device as a timed participant (the measured peak).

    One "step" runs enough back-to-back matmuls to last about ``target_s``, so per-call
    dispatch overhead does not lower the measured rate of a fast accelerator.
    """
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    # Random operands: all-zero inputs draw less power and run faster on GPUs.
    a = jax.device_put(jax.random.normal(k1, (size, size), dtype), device)
    b = jax.device_put(jax.random.normal(k2, (size, size), dtype), device)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()  # compile
    t0 = time.perf_counter()
    matmul(a, b).block_until_ready()
    reps = max(1, math.ceil(target_s / max(time.perf_counter() - t0, 1e-6)))

    def step() -> None:
        for _ in range(reps):
            out = matmul(a, b)
        out.block_until_ready()

    return System(name="matmul", step=step, flops_per_step=2.0 * size**3 * reps,
                  note=f"{size}x{size}x{size} {dtype} matmul, {reps} per step")


class _JaxStepper:
    """Holds the (donated, hence replaced every step) train state between timed steps."""

    def __init__(self, compiled: Callable, state: train.TrainState, batches: list[dict]):
        self.compiled, self.state, self.batches = compiled, state, batches
        self.count = 0
        self.metrics: dict = {}

    def __call__(self) -> None:
        batch = self.batches[self.count % len(self.batches)]
        self.state, self.metrics = self.compiled(self.state, batch)
        jax.block_until_ready((self.state, self.metrics))
        self.count += 1


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

    Raises:
      config_lib.ConfigError: one line naming the bad value and the fix, before any compile.
    """
    if preset:
        config.model.preset = preset
    if batch:
        config.global_batch_size = batch
    if seq_len:
        config.max_seq_length = seq_len
        config.max_predictions = default_max_predictions(seq_len)
    if max_predictions:
        config.max_predictions = max_predictions
    if dtype:
        if dtype not in _DTYPES:
            raise config_lib.ConfigError(f"--dtype={dtype!r}; expected one of {_DTYPES}")
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


def bertjax_system(config: Any, mesh_shape: tuple[int, int, int]) -> tuple[System, dict]:
    """Builds, compiles (AOT) and wraps the real bertjax train step.

    Returns:
      (the System, {"lower_s", "compile_s" (XLA's part), "compiled", "devices", "flops",
      "stepper", "num_params", "host_batches"}).
    """
    mesh = sharding.make_mesh(*mesh_shape)
    state, fns = train.build(config, mesh)
    rng = np.random.default_rng([config.seed, multihost.process_index()])
    local = multihost.local_batch_size(config.global_batch_size)
    # Two batches, placed once: the step sees changing data without host->device time.
    host = [synthetic.batch(rng, local, config.max_seq_length, config.max_predictions,
                            config.model.vocab_size,
                            pairs_per_row=config.data.get("pairs_per_row", 1)) for _ in range(2)]
    batch_like = {k: np.zeros((config.global_batch_size,) + v.shape[1:], v.dtype)
                  for k, v in host[0].items()}
    shardings = train.batch_shardings(fns, batch_like)
    batches = [multihost.global_batch(h, shardings) for h in host]
    step_fn = train.jit_train_step(fns, batch_like)
    t0 = time.perf_counter()
    lowered = step_fn.lower(state, batches[0])
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    cfg = config_lib.model_config(config)
    b, l = config.global_batch_size, config.max_seq_length
    flops = pretraining_flops(config)
    stepper = _JaxStepper(compiled, state, batches)
    system = System(name="bertjax", step=stepper, flops_per_step=flops["total"],
                    tokens_per_step=b * l, sequences_per_step=b, compile_s=t2 - t0,
                    note="sparse MLM head at max_predictions positions")
    info = {"lower_s": t1 - t0, "compile_s": t2 - t1, "compiled": compiled,
            "devices": list(mesh.devices.flat), "flops": flops, "stepper": stepper,
            "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
            "host_batches": host}
    return system, info


def error_line(e: BaseException) -> str:
    """An exception as one short line for the report."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:300]}"


def warm_up(system: System, n: int) -> None:
    """Runs ``n`` untimed steps (compilation, autotuning, allocator growth happen here)."""
    for _ in range(n):
        system.step()


def time_rounds(systems: list[System], steps: int) -> None:
    """Times ``steps`` rounds; each round times one step of every system, in a rotated order
    so that no system always runs right after the same neighbour."""
    for s in systems:
        s.times = []
    for r in range(steps):
        k = r % len(systems)
        for s in systems[k:] + systems[:k]:
            t0 = time.perf_counter()
            s.step()
            s.times.append(time.perf_counter() - t0)


def _summary(s: System, peak: float | None, matmul_flops_per_s: float) -> dict[str, Any]:
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
        summarised by bertjax.bench_profile (device busy share, time by kind, top kernels).

    Returns:
      The results as a JSON-ready dict (see ``format_report`` for what is in it).

    Raises:
      config_lib.ConfigError: a bad config, before anything is built.
    """
    mesh_shape = config_lib.validate(config, jax.device_count())
    if steps < 1 or warmup < 0:
        raise config_lib.ConfigError(f"--steps={steps}, --warmup={warmup}; expected steps >= 1 "
                                     "and warmup >= 0")
    backend = jax.default_backend()
    device = jax.devices()[0]
    cfg = config_lib.model_config(config)
    ours, info = bertjax_system(config, mesh_shape)
    warm_up(ours, warmup)
    memory = peak_memory(info["compiled"], info["devices"])  # before anything else allocates
    n_dev = len(info["devices"])
    size = matmul_size or (2048 if backend == "cpu" else 8192)
    matmul = matmul_system(size, cfg.dtype, device)  # the dtype the model's matmuls run in
    warm_up(matmul, 1)
    systems, failed = [ours, matmul], {}
    if compare:
        from bertjax import bench_compare  # imports transformers and torch
        built, failed = bench_compare.systems(config, cfg, info["host_batches"], torch_compile)
        for other in built:
            try:
                warm_up(other, warmup)
                systems.append(other)
            except Exception as e:  # e.g. torch.compile without a working C++ toolchain
                failed[other.name] = error_line(e)
    time_rounds(systems, steps)
    profile = None
    if profile_dir:
        from bertjax import bench_profile
        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
            warm_up(ours, PROFILE_STEPS)
        try:
            profile = bench_profile.summarize(
                bench_profile.load_events(bench_profile.find_trace(profile_dir)))
        except (OSError, ValueError) as e:  # the timings stand without the summary
            profile = {"devices": [], "error": error_line(e)}

    # On a CPU the (fake) devices share the host's cores: the host matmul rate is the peak.
    # On accelerators each device brings its own peak.
    matmul_one = matmul.flops_per_step / matmul.median_s
    matmul_rate = matmul_one * (1 if backend == "cpu" else n_dev)
    table = table_peak_flops(device.device_kind) if backend != "cpu" else None
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


def main() -> None:
    """The command line: flags, then ``apply_overrides``, ``run``, the table and the JSON."""
    from absl import app, flags

    from bertjax import cli
    default = os.path.normpath(os.path.join(os.path.dirname(__file__), os.pardir, "configs",
                                            "bert_tiny.py"))
    config_flag = cli.define_config(default, lock_config=True,
                                    help_string="Run config file (configs/*.py[:args]).")
    flags.DEFINE_string("preset", None, "Model preset (tiny ... large); default: the config's.")
    flags.DEFINE_integer("batch", None, "Global batch per step; default: the config's.")
    flags.DEFINE_integer("seq_len", None, "Sequence length; default: the config's.")
    flags.DEFINE_integer("max_predictions", None,
                         "Masked positions per sequence; default 20 per 128 tokens.")
    flags.DEFINE_enum("dtype", None, list(_DTYPES), "Compute dtype (params stay float32).")
    flags.DEFINE_enum("attention_impl", None, ["auto", "explicit", "xla", "cudnn"],
                      "xla and cudnn need --config.model.attention_dropout=0.")
    flags.DEFINE_string("mesh", None, "data,fsdp,tensor sizes, e.g. 1,1,1 or -1,1,1.")
    flags.DEFINE_enum("optimizer", None, ["lamb", "adamw"],
                      "Default: the config's (adamw with --compare).")
    flags.DEFINE_integer("accum_steps", 1, "Micro-batches per step.")
    flags.DEFINE_integer("pairs_per_row", 1, "Sequences packed per row (block-diagonal "
                         "attention); 1: one per row, as in --compare's peers.")
    flags.DEFINE_integer("steps", 20, "Timed steps.")
    flags.DEFINE_integer("warmup", 5, "Untimed steps first.")
    flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
    flags.DEFINE_bool("compare", False, "Also time transformers' Flax and torch BERT.")
    flags.DEFINE_integer("matmul_size", 0, "Reference matmul side; 0: 2048 on CPU, 8192 else.")
    flags.DEFINE_bool("torch_compile", True, "With --compare, also try torch.compile.")
    flags.DEFINE_string("profile_dir", None, "Trace 3 extra bertjax steps with jax.profiler.")
    f = flags.FLAGS

    def run_main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}; use --flag=value")
        config = cli.config_value(config_flag)
        optimizer = f.optimizer
        if f.compare and optimizer is None and config.optim.name == "lamb":
            optimizer = "adamw"  # torch ships no LAMB: every system runs the same AdamW
        try:
            if f.compare and optimizer == "lamb":
                raise config_lib.ConfigError("--optimizer=lamb with --compare; torch has no "
                                             "LAMB, so --compare runs AdamW in every system")
            if f.compare and f.pairs_per_row > 1:
                raise config_lib.ConfigError(f"--pairs_per_row={f.pairs_per_row} with --compare; "
                                             "the peers run one per row: use 1")
            apply_overrides(config, preset=f.preset, batch=f.batch, seq_len=f.seq_len,
                            max_predictions=f.max_predictions, dtype=f.dtype,
                            attention_impl=f.attention_impl, mesh=f.mesh, optimizer=optimizer,
                            accum_steps=f.accum_steps, steps=f.warmup + f.steps,
                            pairs_per_row=f.pairs_per_row)
            results = run(config, f.steps, f.warmup, f.compare, f.matmul_size, f.torch_compile,
                          f.profile_dir)
        except config_lib.ConfigError as e:
            cli.fail(str(e))
        print(format_report(results), flush=True)
        if results.get("profile"):
            from bertjax import bench_profile
            print(bench_profile.format_summary(results["profile"], results["profile_steps"]),
                  flush=True)
        if f.json:
            write_json(results, f.json)
            print(f"wrote {f.json}")

    from absl import logging
    logging.set_verbosity(logging.WARNING)  # the table is the output; build() logs at INFO
    app.run(run_main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    # Run the importable module's main, not this __main__ copy, so that bench_compare and this
    # entry point share one ``System`` class.
    from bertjax import bench
    bench.main()
