"""Prepare pre-training data: `python -m bertjax.prepare --input SOURCE --output DIR`.

SOURCE is a glob of corpus-format text files, `embedded` (Python stdlib docstrings) or
`tfds:NAME[:SPLIT]` (read from the local TFDS data dir, never downloaded).

`--vocab=runs/imported` (an import's directory, an HF BERT directory or a vocab.txt) tokenizes
the corpus as that model does: its WordPiece vocabulary and casing, its special ids, the ids
BertTokenizer gives; continue its pre-training with `python -m bertjax.pretrain
--config.init_from=runs/imported --config.data.path=OUTPUT`.

Kept short on purpose: flags in, `bertjax.data.prepare.prepare` does the work. A bad input stops
with one line on stderr and exit status 2 (the traceback only with --debug). Rerunning the same
command resumes: complete shards are skipped; metadata.json appears when everything is done.
Several machines can share the work: the same command with --worker_index i --num_workers n
(train the tokenizer first with --tokenizer_only when there is more than one worker).
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging

from bertjax import cli
from bertjax import lock
from bertjax import progress

_DEBUG = cli.define_debug_flag()
_INPUT = flags.DEFINE_string(
    "input", None, "Glob(s) of corpus-format text files (comma-separated), 'embedded' (Python "
    "stdlib docstrings), or tfds:NAME[:SPLIT].")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory.")
_VOCAB = flags.DEFINE_integer("vocab_size", 30522, "Tokenizer pieces to train (specials included).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Use this sentencepiece .model; do not train.")
_WORDPIECE = flags.DEFINE_string(
    "vocab", None, "Tokenize as an imported BERT does: its directory (python -m bertjax.convert "
    "--from=hf|tf output, or an HF model) or a WordPiece vocab.txt; do not train.")
_LOWER = flags.DEFINE_bool("do_lower_case", None, "--vocab's casing when no tokenizer_config.json "
                           "beside it says it: true for uncased vocabularies, false for cased.")
_TOK_TYPE = flags.DEFINE_enum("tokenizer_type", "unigram", ["unigram", "bpe"],
                              "SentencePiece model type.")
_SHARDS = flags.DEFINE_integer("num_shards", None, "Output shards (default: a power of two >= 8, "
                               "~32 MB of text each); use at least the largest host count.")
_EVAL = flags.DEFINE_float("eval_fraction", 0.02, "Fraction of documents held out for evaluation.")
_WORKER = flags.DEFINE_integer("worker_index", 0, "This worker's index.")
_WORKERS = flags.DEFINE_integer("num_workers", 1, "Workers sharing the preparation.")
_PROCS = flags.DEFINE_integer("processes", None, "Processes on this machine (default: all cores).")
_TFDS_DIR = flags.DEFINE_string("tfds_data_dir", None, "TFDS data dir (never downloaded into).")
_TFDS_KEY = flags.DEFINE_string("tfds_text_key", "text", "Text feature of the TFDS dataset.")
_TOK_ONLY = flags.DEFINE_bool("tokenizer_only", False, "Only train and save the tokenizer.")
_MAX_DOCS = flags.DEFINE_integer("max_documents", None, "embedded: keep the first N documents.")
_VERIFY = flags.DEFINE_bool("verify", False, "Check a prepared --output: the tokenizer and every "
                            "shard against metadata.json (sha256), every record.")


def main(argv: list[str]) -> None:
    cli.start(argv, "use --flag=value")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # TensorFlow here never needs an accelerator
    from bertjax.data import prepare as prepare_lib  # after flag parsing: TensorFlow, no JAX
    from bertjax.data.errors import DataError

    try:
        with cli.input_errors(_DEBUG.value):
            if not _OUTPUT.value:
                raise DataError("--output is required (expected the directory to write shards "
                                "to)")
            if _VERIFY.value:
                n = prepare_lib.verify(_OUTPUT.value)
                print(f"{_OUTPUT.value}: {n} documents, all checksums and records OK")
                return
            if not _INPUT.value:
                raise DataError("--input is required (expected a glob of text files, 'embedded' "
                                "or tfds:NAME)")
            # workers of one preparation write the same output together: one lock per worker
            mine = (_OUTPUT.value if _WORKERS.value <= 1
                    else f"{_OUTPUT.value}.worker{_WORKER.value}")
            # no log inside --output: prepared data is copied between hosts and buckets and
            # compared by listing and checksum; the libraries' lines go to the cache's logs/
            with lock.hold(mine, inside=False, what="--output"):
                meta = prepare_lib.prepare(prepare_lib.PrepareConfig(
                    input=_INPUT.value, output=_OUTPUT.value, vocab_size=_VOCAB.value,
                    tokenizer=_TOKENIZER.value, tokenizer_type=_TOK_TYPE.value,
                    num_shards=_SHARDS.value, eval_fraction=_EVAL.value,
                    worker_index=_WORKER.value, num_workers=_WORKERS.value,
                    processes=_PROCS.value, tfds_data_dir=_TFDS_DIR.value,
                    tfds_text_key=_TFDS_KEY.value, tokenizer_only=_TOK_ONLY.value,
                    max_documents=_MAX_DOCS.value, vocab=_WORDPIECE.value,
                    do_lower_case=_LOWER.value), progress=progress.bar)
    except KeyboardInterrupt:
        print("interrupted: complete shards are kept; rerun the same command to resume",
              file=sys.stderr)
        sys.exit(130)
    if meta is None:
        print("this worker is done; metadata.json is written when every worker has finished")
        return
    train, ev = meta["splits"]["train"], meta["splits"]["eval"]
    print(f"{_OUTPUT.value}: {meta['num_shards']} shards, vocab {meta['vocab_size']}; train "
          f"{train['documents']} documents / {train['tokens']} tokens, eval {ev['documents']} "
          f"documents / {ev['tokens']} tokens")


if __name__ == "__main__":
    cli.run(main, verbosity=logging.INFO)  # as it always was here: no orbax or jax to quiet
