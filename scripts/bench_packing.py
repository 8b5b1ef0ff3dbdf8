#!/usr/bin/env python3
"""Packing, measured: the same pre-training run with one NSP pair per row and with packed rows.

    python scripts/bench_packing.py [--steps 200] [--pairs_per_row 3] [--seq_len 128]
                                    [--batch 64] [--config configs/bert_tiny.py]

Runs the pre-training loop (real tf.data pipeline on the embedded corpus, held-out evaluation with
one pair per row in both runs) twice in this process, one pair per row first, then packed, for
the same number of steps, and prints per run: time per step, tokens/s, non-padding tokens/s, the
padding share and the held-out MLM accuracy; then the packed / unpacked ratios. The step costs
the same either way (same rows of the same length); packing puts more real tokens into it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bertjax.bench import ab  # noqa: E402  (argparse only: jax starts in main)


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main() -> int:
    args = ab.parse_args(__doc__, config=os.path.join(ROOT, "configs", "bert_tiny.py"),
                         steps=200, pairs_per_row=3, seq_len=128, batch=64,
                         workdir=(None, "default: a new temporary directory"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bertjax import loop  # jax starts here

    root = args.workdir or tempfile.mkdtemp(prefix="bench_packing_")
    rows = []
    for pack in (1, args.pairs_per_row):
        c = load_config(args.config)
        c.total_steps = c.eval_every = c.checkpoint_every = args.steps
        c.optim.warmup_steps = min(c.optim.warmup_steps, args.steps)
        c.max_seq_length, c.global_batch_size = args.seq_len, args.batch
        c.max_predictions = max(1, round(args.seq_len * 0.15 + 0.5))  # 20 at 128, 77 at 512
        c.eval_batch_size = args.batch
        c.progress_bar = False
        c.data.pairs_per_row = pack
        c.nsp = True  # rows pack NSP pairs (bert_tiny's default is MLM only), both arms alike
        t0 = time.perf_counter()
        r = loop.run(c, os.path.join(root, f"pairs{pack}"))
        rows.append((pack, r, time.perf_counter() - t0))
    print(f"\n{args.steps} steps, batch {args.batch} x {args.seq_len}, {args.config}")
    tokens = args.batch * args.seq_len
    print(ab.table(
        [("pairs/row", "{:>9}"), ("s/step", "{:8.3f}"), ("tokens/s", "{:10,.0f}"),
         ("non-pad/s", "{:10,.0f}"), ("padding", "{:7.1f}%"), ("eval MLM acc", "{:12.4f}"),
         ("eval loss", "{:9.4f}"), ("wall s", "{:7.0f}")],
        [("<=" + str(pack), tokens / r["tokens_per_s"], r["tokens_per_s"], r["real_tokens_per_s"],
          100 * r["padding_share"], r["eval"]["mlm_accuracy"], r["eval"]["loss"], wall)
         for pack, r, wall in rows]))
    (_, a, _), (_, b, _) = rows
    real = ab.ratio(b["real_tokens_per_s"], a["real_tokens_per_s"])
    step = ab.ratio(a["tokens_per_s"], b["tokens_per_s"])
    print(f"packed / one pair per row: non-padding tokens/s {real}, step time {step}, eval MLM "
          f"accuracy {b['eval']['mlm_accuracy']:.4f} vs {a['eval']['mlm_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
