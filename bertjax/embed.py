"""Sentence embeddings from a bertjax encoder::

    python -m bertjax.embed --init_from=runs/minilm --input=sentences.txt --output=emb.npy
    python -m bertjax.embed --init_from=runs/minilm --pairs=pairs.tsv [--output=sims.tsv]

Kept short on purpose: flags, then the library (bertjax/finetuning/embedding.py) does the work.
``--input``: one sentence per line -> float32 [N, D] .npy. ``--pairs``: two tab-separated
sentences per line (optional third column: a gold score) -> cosine similarities, and Pearson /
Spearman against the gold scores when present. An existing ``--output`` is refused unless
``--overwrite``.
"""

from absl import flags

from bertjax import cli
from bertjax import lock

_DEBUG = cli.define_debug_flag()
_INIT_FROM = flags.DEFINE_string(
    "init_from", "", "The encoder: a bertjax pre-training or fine-tuning workdir, or an import "
    "(python -m bertjax.convert), e.g. of all-MiniLM-L6-v2.")
_INPUT = flags.DEFINE_string("input", "", "Text file, one sentence per line (needs --output).")
_PAIRS = flags.DEFINE_string("pairs", "", "TSV: sentence<TAB>sentence[<TAB>gold score] per line.")
_OUTPUT = flags.DEFINE_string("output", "", "--input: the .npy to write; --pairs: a TSV of "
                              "index, cosine (and gold) per pair (default: printed).")
_POOLING = flags.DEFINE_enum(
    "pooling", "mean", ["mean", "cls"],
    "mean: average of the last layer's hidden states over real tokens (padding excluded; what "
    "sentence-transformers models such as all-MiniLM-L6-v2 expect); cls: the [CLS] token's last "
    "hidden state. BERT's pooler (tanh dense on [CLS]) is not used: it was trained only for "
    "next-sentence prediction and is retrained by each fine-tuning, so its output is no "
    "general sentence embedding.")
_NORMALIZE = flags.DEFINE_bool("normalize", False, "Scale each embedding to unit L2 norm.")
_MAX_LEN = flags.DEFINE_integer("max_seq_length", 128, "Tokens per sentence, with [CLS] and "
                                "[SEP]; longer sentences are truncated.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Sentences per global batch (a multiple of the "
                              "device count); the last batch is padded, never dropped.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "A sentencepiece .model or a dir with "
                                 "vocab.txt, instead of the workdir's own tokenizer.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_PACK = flags.DEFINE_integer("examples_per_row", 1, "Up to this many sentences share a row "
                             "(attention kept within each; the same embeddings up to float "
                             "rounding, several times faster for short sentences).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --output file "
                                "(without it an existing file is refused, nothing computed).")


def main(argv):
    cli.start(argv, "use --flag=value")
    from bertjax import multihost  # after flag parsing: jax starts here
    from bertjax.finetuning import embedding

    settings = embedding.Settings(
        init_from=_INIT_FROM.value, pooling=_POOLING.value, normalize=_NORMALIZE.value,
        max_seq_length=_MAX_LEN.value, batch_size=_BATCH.value, tokenizer=_TOKENIZER.value,
        dtype=_DTYPE.value, examples_per_row=_PACK.value)
    with cli.input_errors(_DEBUG.value):
        multihost.initialize()  # several processes: BERTJAX_* variables (launch/local.py)
        with lock.hold(_OUTPUT.value, inside=False, what="--output",
                       chief=multihost.is_chief()):
            embedding.run(settings, _INPUT.value, _PAIRS.value, _OUTPUT.value,
                          overwrite=_OVERWRITE.value)


if __name__ == "__main__":
    cli.run(main)
