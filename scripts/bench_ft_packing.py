#!/usr/bin/env python3
"""Fine-tuning with packed rows, measured: the same run one example per row and packed.

    python scripts/bench_ft_packing.py [--init_from runs/bert_tiny] [--preset ""]
        [--examples_per_row 8] [--steps 150] [--seq_len 128] [--batch 32]

The demo task (configs/demo.py: docstring sentences of 8-30 words, as written or with two
words swapped) fine-tuned twice in this process, one example per row first, then with up to
``--examples_per_row`` examples a row, for the same steps, batch and seed. Sentences of this
length fill ~20% of a 128-token row, about what SST-2's fill is. Per run it prints the rows a
step computes, training steps/s and examples/s (the runner's clock: without compiling,
evaluation and checkpoints), dev accuracy and the run's wall time; then the ratios.

The encoder comes from ``--init_from`` (a pre-training workdir: ``python -m bertjax.pretrain``
writes runs/bert_tiny), or with ``--preset`` (mini, small, base, ...) is that model from random
initialisation with the workdir's tokenizer: a wider model, whose step is matmul-bound.
"""

from __future__ import annotations

import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bertjax.bench import ab  # noqa: E402  (argparse only: jax starts in main)


def main() -> int:
    args = ab.parse_args(
        __doc__, init_from=os.path.join(ROOT, "runs", "bert_tiny"),
        preset=("", "train this preset from scratch instead"), examples_per_row=8, steps=150,
        seq_len=128, batch=32, workdir=(None, "default: a new temporary directory"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import demo as demo_config

    from bertjax import rundir
    from bertjax.finetuning import classify, demo

    if not os.path.isdir(args.init_from):
        print(f"--init_from={args.init_from} does not exist; run `python -m bertjax.pretrain` "
              "first or name a pre-training workdir", file=sys.stderr)
        return 2
    root = args.workdir or tempfile.mkdtemp(prefix="bench_ft_packing_")
    runs = []
    for m in (1, args.examples_per_row):
        c = demo_config.get_config()
        c.init_from = args.init_from
        c.compare_scratch = False
        if args.preset:
            saved = rundir.saved_config(args.init_from)
            c.tokenizer = rundir.sentencepiece_path(saved) or ""
            c.init_from = ""
            c.model.preset = args.preset
        c.max_seq_length, c.global_batch_size = args.seq_len, args.batch
        c.total_steps = c.eval_every = args.steps
        c.data.examples_per_row = m
        c.tensorboard = False
        c = demo.prepare(c, root)  # the demo's files, written once into root/data
        runs.append((m, classify.run(c, os.path.join(root, f"examples{m}"))))
    encoder = args.preset + " from scratch" if args.preset else f"from {args.init_from}"
    print(f"\n{args.steps} steps, batch {args.batch} examples, rows of {args.seq_len} tokens, "
          f"demo task, encoder {encoder}")
    print(ab.table(
        [("per row", "{:>7}"), ("rows/step", "{:>9}"), ("s/step", "{:8.3f}"),
         ("examples/s", "{:10.1f}"), ("dev acc", "{:8.4f}"), ("wall s", "{:7.0f}")],
        [("<=" + str(m), r.get("rows_per_step", args.batch), 1 / r["train_steps_per_second"],
          r["train_examples_per_second"], r["dev"]["accuracy"], r["seconds"]) for m, r in runs]))
    (_, a), (_, b) = runs
    examples = ab.ratio(b["train_examples_per_second"], a["train_examples_per_second"])
    wall = ab.ratio(a["seconds"], b["seconds"])
    print(f"packed / one per row: examples/s {examples}, wall {wall}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
