"""Input-pipeline throughput: `python -m bertjax.data.bench [--data DIR] [--seconds 10]`.

Prints rows/s, non-padding tokens/s and the rows' fill at seq 128 and 512 (NSP pairs + dynamic
masking), one pair per row and packed (up to --pairs_per_row pairs per row), once with a single
tf.data thread (the per-core figure) and once with all cores; with --stats also the masking and
NSP statistics. Without --data it prepares the embedded corpus (Python stdlib
docstrings) once into a cache directory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from bertjax.data import prepare as prepare_lib
from bertjax.data import pretraining, sources
from bertjax.data.errors import DataError
from bertjax.data.tokenizer import NUM_SPECIAL


def measure(data: str, seq_len: int, max_predictions: int, batch_size: int, seconds: float,
            threads: int | None, pairs_per_row: int = 1) -> tuple[float, float]:
    """Runs one pipeline for `seconds` after a warm-up.

    Args:
      data: prepared directory.
      seq_len, max_predictions, batch_size: pipeline shapes.
      seconds: measuring time.
      threads: tf.data threads (1 = one core; None = all).
      pairs_per_row: 1, or pack up to this many NSP pairs into a row.

    Returns:
      (rows per second, non-padding tokens per second).
    """
    it = pretraining.make_pretraining_iterator(
        data, batch_size=batch_size, seq_len=seq_len, max_predictions=max_predictions, seed=0,
        threads=threads, pairs_per_row=pairs_per_row)
    for _ in range(5):  # tracing, file opening and buffer filling are not throughput
        next(it)
    examples = tokens = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = next(it)
        examples += batch["input_ids"].shape[0]
        tokens += int(batch["input_mask"].sum())
    elapsed = time.perf_counter() - start
    return examples / elapsed, tokens / elapsed


def statistics(data: str, seq_len: int, max_predictions: int, min_masked: int = 100_000,
               **kwargs) -> dict[str, float]:
    """Masking and pairing statistics over at least `min_masked` masked tokens.

    Args:
      data: prepared directory.
      seq_len, max_predictions: pipeline shapes.
      min_masked: stop once this many tokens were masked.
      **kwargs: more make_pretraining_iterator arguments (nsp, whole_word, seed, ...).

    Returns:
      masked_share (of regular tokens), mask/random/keep shares of the masked tokens,
      is_random_next share, mean_length (non-padding tokens), masked count.
    """
    it = pretraining.make_pretraining_iterator(data, batch_size=64, seq_len=seq_len,
                                               max_predictions=max_predictions, **kwargs)
    source = sources.Source(data, "train")  # special ids where the data's vocabulary has them
    mask_id, table = source.special_ids["[MASK]"], source.regular_mask()
    maskable = (lambda ids: ids >= NUM_SPECIAL) if table is None else (lambda ids: table[ids])
    n = regular = as_mask = kept = random_next = examples = length = 0
    while n < min_masked:
        b = next(it)
        used = b["masked_lm_weights"] > 0
        rows = np.nonzero(used)[0]
        seen = b["input_ids"][rows, b["masked_lm_positions"][used]]
        label = b["masked_lm_ids"][used]
        n += len(label)
        as_mask += int((seen == mask_id).sum())
        kept += int((seen == label).sum())
        regular += int(maskable(b["input_ids"]).sum() + (seen == mask_id).sum())
        random_next += int(b["next_sentence_labels"].sum())
        examples += len(b["input_ids"])
        length += int(b["input_mask"].sum())
    return {"masked_share": n / regular, "mask": as_mask / n, "keep": kept / n,
            "random": 1 - (as_mask + kept) / n, "is_random_next": random_next / examples,
            "mean_length": length / examples, "masked": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="prepared directory (default: the embedded corpus)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--pairs_per_row", type=int, default=3,
                        help="the packed rows' most pairs (the unpacked rows have one)")
    parser.add_argument("--stats", action="store_true",
                        help="also print masking/NSP statistics over 100k masked tokens")
    args = parser.parse_args()
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        data = args.data
        if data is None:
            data = os.path.join(tempfile.gettempdir(), "bertjax_bench_embedded")
            if not os.path.exists(os.path.join(data, prepare_lib.METADATA)):
                prepare_lib.prepare(prepare_lib.PrepareConfig(input="embedded", output=data))
        cores = os.cpu_count() or 1
        print(f"data {data}, batch {args.batch_size}, {args.seconds:.0f} s each, {cores} cores")
        for seq_len, preds in ((128, 20), (512, 80)):
            for pack in (1, args.pairs_per_row):
                for threads, label in ((1, "1 core"), (None, f"{cores} cores")):
                    ex, tok = measure(data, seq_len, preds, args.batch_size, args.seconds,
                                      threads, pack)
                    per = 1 if threads == 1 else cores
                    print(f"seq {seq_len:4d} pairs/row<={pack} {label:>9}: {ex:8.0f} rows/s "
                          f"{tok:10.0f} tokens/s ({tok / per:9.0f}/core), rows "
                          f"{100 * tok / max(ex * seq_len, 1):.1f}% filled")
            if args.stats:
                for nsp, whole_word in ((True, False), (True, True), (False, False)):
                    st = statistics(data, seq_len, preds, nsp=nsp, whole_word=whole_word)
                    print(f"  nsp={nsp!s:5} whole_word={whole_word!s:5} " + " ".join(
                        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in st.items()))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
