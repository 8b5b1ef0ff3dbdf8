"""Input-pipeline throughput: `python -m bertjax.data.bench [--data DIR] [--seconds 10]`.

Prints examples/s and non-padding tokens/s at seq 128 and 512 (NSP pairs + dynamic masking), once
with a single tf.data thread (the per-core figure) and once with all cores. Without --data it
prepares the embedded corpus (Python stdlib docstrings) once into a cache directory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from bertjax.data import prepare as prepare_lib
from bertjax.data import pretraining
from bertjax.data.errors import DataError


def measure(data: str, seq_len: int, max_predictions: int, batch_size: int, seconds: float,
            threads: int | None) -> tuple[float, float]:
    """Runs one pipeline for `seconds` after a warm-up.

    Args:
      data: prepared directory.
      seq_len, max_predictions, batch_size: pipeline shapes.
      seconds: measuring time.
      threads: tf.data threads (1 = one core; None = all).

    Returns:
      (examples per second, non-padding tokens per second).
    """
    it = pretraining.make_pretraining_iterator(
        data, batch_size=batch_size, seq_len=seq_len, max_predictions=max_predictions, seed=0,
        threads=threads)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="prepared directory (default: the embedded corpus)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch_size", type=int, default=32)
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
            for threads, label in ((1, "1 core"), (None, f"{cores} cores")):
                ex, tok = measure(data, seq_len, preds, args.batch_size, args.seconds, threads)
                per = 1 if threads == 1 else cores
                print(f"seq {seq_len:4d} {label:>9}: {ex:9.0f} examples/s {tok:11.0f} tokens/s  "
                      f"({ex / per:8.0f} examples/s/core, {tok / per:10.0f} tokens/s/core)")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
