#!/usr/bin/env python3
"""The pruned last layer, measured: the real pre-training step with the last encoder layer
computed at every row and at the rows that are read, in one invocation.

    python scripts/bench_prune.py [--config configs/bert_tiny.py] [--steps 20] [--batch 64]
                                  [--seq_len 128] [--pairs_per_row 1]

Times ``bertjax.bench.runner.run`` (the jitted train step on synthetic batches, the same code
path as ``bertjax.pretrain``) with ``model.prune_last_layer`` False, then True, alternating twice
so that drift of a shared machine falls on both, and prints the median step time of each and the
speed-up. The two compute the same numbers (tests/test_model.py).
"""

from __future__ import annotations

import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bertjax.bench import ab  # noqa: E402  (argparse only: jax starts in main)


def main() -> int:
    args = ab.parse_args(__doc__, config=os.path.join(ROOT, "configs", "bert_tiny.py"),
                         steps=20, batch=64, seq_len=128, pairs_per_row=1)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bench_packing import load_config  # the config file as the loop reads it
    from bertjax.bench import runner  # jax starts here

    times: dict[bool, list[float]] = {False: [], True: []}
    for prune in (False, True, False, True):
        c = load_config(args.config)
        c.global_batch_size, c.max_seq_length = args.batch, args.seq_len
        c.accum_steps = 1  # the step at --batch (base/large configs accumulate to huge batches)
        c.data.pairs_per_row = args.pairs_per_row
        c.model.prune_last_layer = prune
        r = runner.run(c, steps=args.steps, warmup=2)
        times[prune].append(r["step_time_s"])
        print(f"prune_last_layer={prune}: {r['step_time_s'] * 1e3:.1f} ms/step", flush=True)
    whole, pruned = (statistics.median(times[p]) for p in (False, True))
    print(f"\n{args.config}, batch {args.batch} x {args.seq_len}, {args.pairs_per_row} pair(s) "
          f"per row, {c.max_predictions} predictions: whole last layer {whole * 1e3:.1f} ms/step, "
          f"pruned {pruned * 1e3:.1f} ms/step: {ab.ratio(whole, pruned)} steps/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
