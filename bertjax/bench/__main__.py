r"""Benchmark of the bertjax train step: compile time, step time, throughput, MFU and memory.

    python -m bertjax.bench --config=configs/bert_base.py --batch=16 --seq_len=128 \
        [--dtype=bfloat16] [--attention_impl=cudnn --config.model.attention_dropout=0] \
        [--mesh=1,1,1] [--steps=20 --warmup=5] [--json=bench.json] [--compare] \
        [--profile_dir=DIR]

What is measured, in one process (``runner.run``; the flags go through
``runner.apply_overrides`` first):
  * compile: the AOT ``lower`` and ``compile`` of the real step from ``train.jit_train_step``;
  * step time: the median of ``--steps`` steps after ``--warmup``, each waited for with
    ``block_until_ready``, on numpy synthetic batches already placed on the mesh;
  * model FLOPs per step by ``flops.model_flops`` (one formula), the FLOP/s achieved, and that
    as a fraction of a peak: on accelerators the card's dense bf16 peak from
    ``flops.PEAK_BF16_TFLOPS`` (MFU); on CPU, where there is no datasheet, a large jitted matmul
    in the model's compute dtype measured in the same invocation, i.e. XLA's own matmul rate on
    this host (a library with better CPU kernels, such as torch's oneDNN on AMX, can exceed
    it). The matmul is measured on every backend and reported beside the table value;
  * peak memory: ``peak_bytes_in_use`` from the device when it keeps statistics (GPU, TPU),
    else the compiled step's ``memory_analysis``.

Timed steps of every participant (the matmul reference too) are interleaved round by round, so
a drift of the machine hits all of them equally and ratios in one invocation stay meaningful.

``--compare`` adds transformers' Flax and torch BertForPreTraining on the same geometry, batches
and optimizer (compare.py). No torch or TensorFlow here: it runs where only JAX is.
"""

from __future__ import annotations

from bertjax import config as config_lib
from bertjax.bench import profile, report, runner


def main() -> None:
    """The command line: flags, then ``apply_overrides``, ``run``, the table and the JSON."""
    from absl import flags

    from bertjax import cli
    config_flag = cli.define_config_file("bert_tiny.py", "Run config file (configs/*.py[:args]).")
    flags.DEFINE_string("preset", None, "Model preset (tiny ... large); default: the config's.")
    flags.DEFINE_integer("batch", None, "Global batch per step; default: the config's.")
    flags.DEFINE_integer("seq_len", None, "Sequence length; default: the config's.")
    flags.DEFINE_integer("max_predictions", None,
                         "Masked positions per sequence; default 20 per 128 tokens.")
    flags.DEFINE_enum("dtype", None, list(runner.DTYPES), "Compute dtype (params stay float32).")
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
        cli.start(argv, "use --flag=value")  # as every command: a quiet console
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
            runner.check_outputs(f.json, f.profile_dir)
            runner.apply_overrides(config, preset=f.preset, batch=f.batch, seq_len=f.seq_len,
                                   max_predictions=f.max_predictions, dtype=f.dtype,
                                   attention_impl=f.attention_impl, mesh=f.mesh,
                                   optimizer=optimizer, accum_steps=f.accum_steps,
                                   steps=f.warmup + f.steps, pairs_per_row=f.pairs_per_row)
            results = runner.run(config, f.steps, f.warmup, f.compare, f.matmul_size,
                                 f.torch_compile, f.profile_dir)
        except config_lib.ConfigError as e:
            cli.fail(str(e))
        print(report.format_report(results), flush=True)
        if results.get("profile"):
            print(profile.format_summary(results["profile"], results["profile_steps"]),
                  flush=True)
        if f.json:
            report.write_json(results, f.json)
            print(f"wrote {f.json}")

    cli.run(run_main)  # logs from WARNING up: the table is the output; build() logs at INFO


if __name__ == "__main__":
    main()
