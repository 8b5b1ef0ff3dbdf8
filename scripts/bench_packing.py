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

import argparse
import importlib.util
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "bert_tiny.py"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--pairs_per_row", type=int, default=3)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workdir", default=None, help="default: a new temporary directory")
    args = parser.parse_args()
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
        t0 = time.perf_counter()
        r = loop.run(c, os.path.join(root, f"pairs{pack}"))
        rows.append((pack, r, time.perf_counter() - t0))
    print(f"\n{args.steps} steps, batch {args.batch} x {args.seq_len}, {args.config}")
    print(f"{'pairs/row':>9} {'s/step':>8} {'tokens/s':>10} {'non-pad/s':>10} {'padding':>8} "
          f"{'eval MLM acc':>12} {'eval loss':>9} {'wall s':>7}")
    for pack, r, wall in rows:
        tokens = args.batch * args.seq_len
        print(f"{'<=' + str(pack):>9} {tokens / r['tokens_per_s']:8.3f} "
              f"{r['tokens_per_s']:10,.0f} {r['real_tokens_per_s']:10,.0f} "
              f"{100 * r['padding_share']:7.1f}% {r['eval']['mlm_accuracy']:12.4f} "
              f"{r['eval']['loss']:9.4f} {wall:7.0f}")
    (_, a, _), (_, b, _) = rows
    print(f"packed / one pair per row: non-padding tokens/s x{b['real_tokens_per_s'] / a['real_tokens_per_s']:.3f}, "
          f"step time x{a['tokens_per_s'] / b['tokens_per_s']:.3f}, eval MLM accuracy "
          f"{b['eval']['mlm_accuracy']:.4f} vs {a['eval']['mlm_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
