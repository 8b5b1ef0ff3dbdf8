#!/usr/bin/env python3
"""Sentence embeddings with packed rows, measured: one sentence per row, then several.

    python scripts/bench_embed_packing.py --init_from runs/minilm [--sentences 4000]
        [--examples_per_row 8] [--max_seq_length 128] [--batch_size 64]

Embeds the first N docstring sentences of the Python standard library (the embedded corpus's
source: bertjax.data.corpus; no download) with ``bertjax.embed``'s Embedder twice in this
process, and prints sentences/s for each (compiling excluded: each embedder embeds one batch
first), the ratio and the largest difference between the two sets of embeddings.
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bertjax.bench import ab  # noqa: E402  (argparse only: jax starts in main)


def main() -> int:
    args = ab.parse_args(__doc__, init_from=os.path.join(ROOT, "runs", "minilm"),
                         sentences=4000, examples_per_row=8, max_seq_length=128, batch_size=64)
    if not os.path.isdir(args.init_from):
        print(f"--init_from={args.init_from} does not exist; import a model first, e.g. "
              "python -m bertjax.convert --from=hf --input=DIR --output=runs/minilm",
              file=sys.stderr)
        return 2
    import numpy as np

    from bertjax.data import corpus
    from bertjax.finetuning import embedding

    sentences = []
    for doc in corpus.stdlib_documents():
        sentences += [p for p in doc if 3 <= len(p.split()) <= 60]
        if len(sentences) >= args.sentences:
            break
    sentences = sentences[:args.sentences]
    results = {}
    for m in (1, args.examples_per_row):
        plan = embedding.check(embedding.Settings(
            args.init_from, "mean", False, args.max_seq_length, args.batch_size,
            examples_per_row=m))
        embedder = embedding.Embedder(plan)
        embedder.embed(sentences[:args.batch_size])  # compiles
        t0 = time.perf_counter()
        results[m] = (embedder.embed(sentences), time.perf_counter() - t0)
    (e1, t1), (em, tm) = results[1], results[args.examples_per_row]
    words = sum(len(s.split()) for s in sentences) / len(sentences)
    print(f"{len(sentences)} sentences ({words:.1f} words on average), rows of "
          f"{args.max_seq_length}, batch {args.batch_size} rows, {args.init_from}")
    print(f"one per row:       {len(sentences) / t1:8.1f} sentences/s ({t1:.1f} s)")
    print(f"up to {args.examples_per_row} per row:  {len(sentences) / tm:8.1f} sentences/s "
          f"({tm:.1f} s)")
    print(f"packed / one per row: {ab.ratio(t1, tm)}; max abs difference of the embeddings "
          f"{float(np.abs(e1 - em).max()):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
