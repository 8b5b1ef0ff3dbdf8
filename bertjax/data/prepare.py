"""Raw text or a TFDS dataset -> tokenized document shards (TFRecord) + metadata.json.

Layout of the output directory:

  tokenizer.model                   sentencepiece model (specials at ids 0..4), or, prepared with
  vocab.txt, tokenizer_config.json  --vocab, an imported model's WordPiece vocabulary and casing
                                    (special ids where that vocabulary has them: metadata.json's
                                    special_ids), tokenized id for id as BertTokenizer does
  train-SSSSS-of-NNNNN.tfrecord     training documents of shard S
  eval-SSSSS-of-NNNNN.tfrecord      held-out documents of shard S (chosen by a hash of the text)
  shards/SSSSS.json                 per-shard completion record: counts, sizes, sha256
  prepare_config.json               the settings the directory was started with; a rerun with
                                    settings that change the output is refused
  metadata.json                     written last, once every shard is complete: marks the whole
                                    directory complete; the pipeline reads only this

Each record is one document: `tokens` (int64, all sentences concatenated), `sentence_lengths`
(int64, one per sentence) and `doc_id` (first 63 bits of the sha256 of the document's text).

The work unit is the shard: shard S reads only its own byte range of the input (see text.py) or
its own slice of the TFDS split, so workers and processes never read the same document. A shard's
files are written under temporary names and renamed; its JSON record is renamed into place after
them, so a rerun after an interruption redoes exactly the shards without a record. Shard S belongs
to worker S % num_workers; the worker that completes the last shard writes metadata.json.

Readers check a directory before using it: `check_prepared` (what pre-training runs before it
compiles: metadata.json well formed, every shard file present with its recorded size, the
tokenizer's sha256 and piece count as recorded) and `verify` (that, plus every shard's sha256 and
records). A damaged directory is named in one DataError line, never read as if it were whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import sys
from typing import Any, Callable, Iterator

from bertjax.data import fs
from bertjax.data import records
from bertjax.data import text
from bertjax.data import tokenizer as tok_lib
from bertjax.data import wordpiece as wordpiece_lib
from bertjax.data.errors import DataError, import_tfds

FORMAT = "bertjax-documents/1"
METADATA = "metadata.json"
TOKENIZER = "tokenizer.model"
VOCAB = "vocab.txt"  # a WordPiece preparation's tokenizer (--vocab), with tokenizer_config.json
WORDPIECE = "wordpiece"  # metadata.json's tokenizer_type of such a preparation
_SHARD_BYTES = 32 << 20  # automatic shard count: about one shard per 32 MB of text
# Fewer documents give no NSP partner from another document and no held-out split: a corpus of
# one line, or text without the blank lines that separate documents.
MIN_DOCUMENTS = 2
_GIVEN = "given (--tokenizer)"  # prepare_config.json's "tokenizer" when a model was passed
_GIVEN_VOCAB = "wordpiece (--vocab)"  # ... and when a WordPiece vocabulary was
_SHA256 = re.compile(r"[0-9a-f]{64}")
# The fix for a damaged prepared directory: a rerun redoes shards whose file is missing or of
# another size and writes metadata.json anew from the shards' records.
_DAMAGED = ("rerun the prepare command that made it (it redoes missing shards and rewrites "
            "metadata.json) or copy the directory again")



def default_embedded_dir(vocab_size: int) -> str:
    """Where the embedded corpus is prepared for a vocabulary size ($BERTJAX_CACHE or
    ~/.cache/bertjax)."""
    root = os.environ.get("BERTJAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                        "bertjax"))
    return os.path.join(root, f"embedded-v{vocab_size}")


def data_path(config: Any) -> str:
    """The data a pre-training run config reads: the embedded corpus's prepared directory
    (``config.data.path`` or the default cache, per vocabulary and document cap), else
    ``config.data.path`` (a prepared directory or a TFRecord glob)."""
    d = config.data
    if d.source == "embedded":
        base = d.path or default_embedded_dir(config.model.vocab_size)
        return base if not d.max_documents else f"{base}-docs{d.max_documents}"
    return d.path

@dataclasses.dataclass
class PrepareConfig:
    """Settings of one preparation run (the CLI flags of `python -m bertjax.prepare`)."""
    input: str                        # glob(s) of text files, "embedded", or "tfds:NAME[:SPLIT]"
    output: str
    vocab_size: int = 30522
    tokenizer: str | None = None      # an existing .model; else one is trained on the input
    tokenizer_type: str = "unigram"
    num_shards: int | None = None     # default: a power of two, >= 8, about 32 MB of text each
    eval_fraction: float = 0.02
    worker_index: int = 0
    num_workers: int = 1
    processes: int | None = None      # default: all cores
    tfds_data_dir: str | None = None
    tfds_text_key: str = "text"
    tokenizer_sentences: int = 2_000_000
    tokenizer_only: bool = False
    max_documents: int | None = None  # embedded corpus only: keep the first N documents (tests)
    # A WordPiece vocab.txt, or a directory holding one (an import, an HF model): tokenize as
    # that model does, casing from the tokenizer_config.json beside it (or do_lower_case).
    vocab: str | None = None
    do_lower_case: bool | None = None


@dataclasses.dataclass(frozen=True)
class _Source:
    """Where a shard's documents come from: text byte ranges, or a TFDS example slice."""
    pieces: tuple[text.ByteRange, ...] = ()
    # TFDS: name, split, data_dir, text key, shard, num_shards, first and end example (None when
    # the split size is unknown: then every num_shards-th example).
    tfds: tuple[str, str, str | None, str, int, int, int | None, int | None] | None = None


@dataclasses.dataclass(frozen=True)
class _Job:
    shard: int
    num_shards: int
    source: _Source
    output: str
    tokenizer_path: str
    eval_fraction: float


def shard_name(split: str, shard: int, num_shards: int) -> str:
    """File name of one shard, e.g. train-00003-of-00008.tfrecord."""
    return f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"


def document_hash(doc_text: str) -> int:
    """63-bit id of a document's text (stored as doc_id; also picks the eval split)."""
    return int.from_bytes(hashlib.sha256(doc_text.encode("utf-8")).digest()[:8], "big") >> 1


def is_eval(doc_id: int, fraction: float) -> bool:
    """Whether document ``doc_id`` (its hash) belongs to the held-out split of ``fraction``."""
    # Uses the low bits, independent of shard assignment, so the split does not change with
    # --num_shards or worker counts.
    return (doc_id & 0xFFFFFFFF) < fraction * 2**32


def _tfds_documents(name: str, split: str, data_dir: str | None, key: str, shard: int,
                    num_shards: int, lo: int | None, hi: int | None) -> Iterator[list[str]]:
    tfds = import_tfds()

    builder = tfds.builder(name, data_dir=data_dir)
    if lo is None:
        ds = builder.as_dataset(split=split, shuffle_files=False).shard(num_shards, shard)
    else:
        ds = builder.as_dataset(split=f"{split}[{lo}:{hi}]", shuffle_files=False)
    for example in ds.as_numpy_iterator():
        value = example[key]
        value = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        lines = [l.strip() for l in value.splitlines() if l.strip()]
        if lines:
            yield lines


def _documents(source: _Source) -> Iterator[list[str]]:
    if source.tfds:
        yield from _tfds_documents(*source.tfds)
    for piece in source.pieces:
        yield from text.read_documents(piece)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with fs.path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: str, value: Any) -> None:
    # the process id in the temporary name: workers of one preparation may finish together
    fs.write_atomic(path, json.dumps(value, indent=1, sort_keys=True),
                       tmp=f"{path}.tmp-{os.getpid()}")


def _init_process() -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # preparation never needs an accelerator
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _run_job(job: _Job) -> dict:
    """Tokenizes one shard's documents and writes its train/eval files and completion record."""
    _init_process()
    import tensorflow as tf

    tok = load_tokenizer(job.tokenizer_path)
    encode = tok.encode_batch if isinstance(tok, wordpiece_lib.WordPieceTokenizer) else tok.encode
    stats, writers, tmp = {}, {}, {}
    for split in ("train", "eval"):
        final = os.path.join(job.output, shard_name(split, job.shard, job.num_shards))
        tmp[split] = f"{final}.tmp-{os.getpid()}"
        writers[split] = tf.io.TFRecordWriter(tmp[split])  # TensorFlow's own gs:// support
        stats[split] = {"file": os.path.basename(final), "shard": job.shard, "documents": 0,
                        "sentences": 0, "tokens": 0}
    for lines in _documents(job.source):
        doc_id = document_hash("\n".join(lines))
        sentences = [ids for ids in encode(text.document_sentences(lines)) if ids]
        if not sentences:
            continue
        split = "eval" if is_eval(doc_id, job.eval_fraction) else "train"
        feature = {
            "doc_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[doc_id])),
            "tokens": tf.train.Feature(int64_list=tf.train.Int64List(
                value=[i for ids in sentences for i in ids])),
            "sentence_lengths": tf.train.Feature(int64_list=tf.train.Int64List(
                value=[len(ids) for ids in sentences])),
        }
        # deterministic: the same map order in every process, so every host that prepares the
        # same text writes the same bytes (the hosts' agreement compares their sha256)
        writers[split].write(tf.train.Example(
            features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True))
        s = stats[split]
        s["documents"] += 1
        s["sentences"] += len(sentences)
        s["tokens"] += sum(len(ids) for ids in sentences)
    for split in ("train", "eval"):
        writers[split].close()
        stats[split]["bytes"] = fs.size(tmp[split])
        stats[split]["sha256"] = _sha256(tmp[split])
        # locally an atomic rename; on gs:// a copy and a delete, and the shard's record
        # below is what marks it complete either way
        fs.path(tmp[split]).replace(os.path.join(job.output, stats[split]["file"]))
    record = {"shard": job.shard, **stats}
    _write_json(os.path.join(job.output, "shards", f"{job.shard:05d}.json"), record)
    return record


def _shard_done(output: str, shard: int) -> dict | None:
    """The shard's completion record if it and the files it lists are in place, else None."""
    path = os.path.join(output, "shards", f"{shard:05d}.json")
    try:
        record = json.loads(fs.path(path).read_text())
        for split in ("train", "eval"):
            path = os.path.join(output, record[split]["file"])
            if fs.size(path) != record[split]["bytes"]:
                return None
    except (OSError, ValueError, KeyError):
        return None
    return record


def _resolve_sources(cfg: PrepareConfig) -> tuple[list[_Source], str]:
    """Validates the input and assigns it to shards: (per-shard sources, input description)."""
    if cfg.input.startswith("tfds:"):
        parts = cfg.input[5:].split(":")
        name, split = parts[0], (parts[1] if len(parts) > 1 else "train")
        tfds = import_tfds()

        try:
            builder = tfds.builder(name, data_dir=cfg.tfds_data_dir)
            builder.as_dataset(split=split)  # only opens the files: fails if not prepared locally
            features = builder.info.features
        except Exception as e:  # tfds raises many types for a missing or unknown dataset
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise DataError(f"TFDS dataset {name!r} split {split!r} is not available locally "
                            f"({reason}); prepare it into --tfds_data_dir first (bertjax never "
                            "downloads)") from None
        if cfg.tfds_text_key not in features:
            raise DataError(f"TFDS dataset {name!r} has no feature {cfg.tfds_text_key!r} (it has "
                            f"{sorted(features)}); pass --tfds_text_key with the text feature")
        info = builder.info.splits[split] if split in builder.info.splits else None
        total = info.num_examples if info else None
        n = cfg.num_shards or _auto_num_shards(info.num_bytes if info else 0)
        key = (name, split, cfg.tfds_data_dir, cfg.tfds_text_key)
        return [_Source(tfds=(*key, k, n, total * k // n if total else None,
                              total * (k + 1) // n if total else None))
                for k in range(n)], cfg.input
    if cfg.input == "embedded":
        from bertjax.data import corpus

        fs.path(cfg.output).mkdir(parents=True, exist_ok=True)
        path = os.path.join(cfg.output, "embedded_corpus.txt")
        if not fs.path(path).exists():
            corpus.write_embedded_corpus(path, max_documents=cfg.max_documents)
        files = [path]
    else:
        files = text.expand_inputs(cfg.input)
    sizes, documents = [], 0
    for f in files:  # every byte checked, streaming, before anything is written
        scanned = text.scan_text_file(f, count_documents=MIN_DOCUMENTS - documents)
        sizes.append(scanned.size)
        documents += scanned.documents
    if documents < MIN_DOCUMENTS:
        raise DataError(f"--input {cfg.input!r} holds only {documents} document(s) in "
                        f"{len(files)} file(s) (expected at least {MIN_DOCUMENTS}: pre-training "
                        "pairs sentences across documents and holds some out for evaluation); "
                        "add text, with a blank line between documents")
    n = cfg.num_shards or _auto_num_shards(sum(sizes))
    return [_Source(pieces=tuple(p)) for p in text.plan_splits(files, sizes, n)], cfg.input


def _auto_num_shards(num_bytes: int) -> int:
    # A power of two, so that any power-of-two host count up to it divides the files evenly.
    wanted = max(1, num_bytes // _SHARD_BYTES)
    return min(4096, max(8, 1 << (wanted - 1).bit_length()))


def _tokenizer_sentences(sources: list[_Source], limit: int) -> Iterator[str]:
    """Up to `limit` sentences, taken evenly from the start of every shard's input."""
    per_source = max(1, limit // len(sources))
    for source in sources:
        taken = 0
        for lines in _documents(source):
            for sentence in text.document_sentences(lines):
                yield sentence
                taken += 1
            if taken >= per_source:
                break


def _check_config(cfg: PrepareConfig) -> None:
    if not 0 <= cfg.eval_fraction < 1:
        raise DataError(f"--eval_fraction {cfg.eval_fraction} is out of range (expected 0 <= F < "
                        "1, e.g. 0.02)")
    if not 0 <= cfg.worker_index < cfg.num_workers:
        raise DataError(f"--worker_index {cfg.worker_index} is out of range for --num_workers "
                        f"{cfg.num_workers} (expected 0 <= index < num_workers)")
    if cfg.num_shards is not None and cfg.num_shards < 1:
        raise DataError(f"--num_shards {cfg.num_shards} must be positive (e.g. 256, a multiple of "
                        "the largest host count you will train with)")
    if cfg.tokenizer is None and cfg.vocab_size <= tok_lib.NUM_SPECIAL:
        raise DataError(f"--vocab_size {cfg.vocab_size} leaves no room for text pieces (expected "
                        f"more than the {tok_lib.NUM_SPECIAL} special tokens); pass e.g. "
                        "--vocab_size 30522")
    if cfg.tokenizer is None and cfg.vocab_size > tok_lib.MAX_VOCAB_SIZE:
        raise DataError(f"--vocab_size {cfg.vocab_size} is out of range (expected "
                        f"{tok_lib.NUM_SPECIAL + 1} to {tok_lib.MAX_VOCAB_SIZE}; BERT uses 30522); "
                        "pass a smaller --vocab_size")
    if cfg.tokenizer and cfg.vocab:
        raise DataError(f"--tokenizer {cfg.tokenizer} and --vocab {cfg.vocab} both name a "
                        "tokenizer (expected one: a sentencepiece .model, or a WordPiece vocab of "
                        "an imported model); pass only one of them")
    if cfg.tokenizer:
        tok_lib.Tokenizer.load(cfg.tokenizer)  # a bad --tokenizer stops before --output is made
    if cfg.vocab:
        wordpiece_source(cfg.vocab, cfg.do_lower_case)  # so does a bad --vocab
    _check_output(cfg.output)


def _check_output(output: str) -> None:
    """DataError unless ``output`` is a directory, or can be created as one, that this process
    may write to; creates nothing."""
    out = fs.path(output)
    if out.exists() and not out.is_dir():
        raise DataError(f"--output {output} is an existing file (expected a directory for the "
                        "shards: a new one, or one an earlier run of this command wrote); pass "
                        "another --output")
    parent = fs.nearest_existing(output)
    if parent is None:  # gs://: no directories to create; a refusal shows at the first write
        return
    if not fs.path(parent).is_dir():
        raise DataError(f"--output {output} cannot be created: {parent} is a file, not a "
                        "directory; pass another --output")
    if not fs.writable_dir(parent):
        raise DataError(f"--output {output} is not writable ({parent}: permission denied); pass "
                        "a directory you can write to")


def _read_json(path: str, what: str) -> Any:
    try:
        return json.loads(fs.path(path).read_text())
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bytes that are not text
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0][:120]
        raise DataError(f"{path} is unreadable or not JSON ({reason}); {what}") from None


def _settings(cfg: PrepareConfig, num_shards: int) -> dict:
    """The settings that decide what a preparation writes (prepare_config.json)."""
    return {"input": cfg.input, "num_shards": num_shards, "eval_fraction": cfg.eval_fraction,
            "max_documents": cfg.max_documents,
            "tfds_text_key": cfg.tfds_text_key if cfg.input.startswith("tfds:") else None,
            "tokenizer": _GIVEN if cfg.tokenizer else _GIVEN_VOCAB if cfg.vocab else
            f"{cfg.tokenizer_type}, vocab_size {cfg.vocab_size}",
            # Which worker writes which shard. A --tokenizer_only run leaves it open for the
            # workers that follow it (None), whatever --num_workers it was given.
            "num_workers": None if cfg.tokenizer_only else cfg.num_workers}


def _claim_output(cfg: PrepareConfig, num_shards: int) -> None:
    """Records the settings, or checks that a rerun into the same directory uses the same ones
    (a finished directory included: its metadata.json is never rewritten for other settings)."""
    settings = _settings(cfg, num_shards)
    path = os.path.join(cfg.output, "prepare_config.json")
    if not fs.path(path).exists():
        _write_json(path, settings)
        return
    before = _read_json(path, f"it records the settings {cfg.output} was started with: use "
                              "another --output")
    if not isinstance(before, dict):
        raise DataError(f"{path} holds {type(before).__name__}, expected the settings object "
                        f"prepare writes; use another --output")
    if "tokenizer" not in before and fs.path(os.path.join(cfg.output, METADATA)).exists():
        # Written by a bertjax that did not record the tokenizer: the finished metadata did.
        try:
            meta = load_metadata(cfg.output)
            before["tokenizer"] = _GIVEN if meta.get("tokenizer_type") == "given" else \
                f"{meta.get('tokenizer_type')}, vocab_size {meta.get('requested_vocab_size')}"
        except DataError:
            pass  # a damaged metadata.json is rewritten at the end of a same-settings rerun
    changed = {}
    for key, now in settings.items():
        if key not in before:
            continue  # an older bertjax did not record it
        was = before[key]
        if key == "num_workers" and None in (was, now):
            continue
        if key == "tokenizer" and now == _GIVEN and was != _GIVEN_VOCAB:
            continue  # _get_tokenizer compares the given model with tokenizer.model itself
        if was != now:
            changed[key] = (was, now)
    if changed:
        raise DataError(f"--output {cfg.output} holds a preparation with other settings (was, "
                        f"now): {changed}; use another --output, or rerun with the flags it was "
                        "started with to resume or keep it")
    if before.get("num_workers", 0) is None and settings["num_workers"] is not None:
        _write_json(path, {**before, "num_workers": settings["num_workers"]})


def load_tokenizer(path: str) -> Any:
    """The tokenizer a prepared directory's file holds: a WordPiece ``vocab.txt`` (casing from
    the tokenizer_config.json beside it) or a sentencepiece model; either has ``special_ids``,
    ``word_start_mask()`` and ``regular_mask()``."""
    if os.path.basename(path) == VOCAB:
        try:
            return wordpiece_lib.WordPieceTokenizer.from_dir(os.path.dirname(path))
        except (FileNotFoundError, ValueError) as e:
            raise DataError(f"{path}: {e}") from None
    return tok_lib.Tokenizer.load(path)


def wordpiece_source(vocab: str, do_lower_case: bool | None = None) -> tuple[str, dict]:
    """The vocab.txt a ``--vocab`` names and the casing to tokenize with, checked.

    Args:
      vocab: a WordPiece vocab.txt, or a directory holding one (an import made by
        ``python -m bertjax.convert --from=hf|tf``, an HF BERT directory).
      do_lower_case: overrides the tokenizer_config.json beside the vocabulary; needed when
        there is none (a wrong guess silently maps most cased words to [UNK]).

    Returns:
      (the vocab.txt path, {do_lower_case, strip_accents, tokenize_chinese_chars}).

    Raises:
      DataError: one line: no such file, no casing, a repeated token or a special token missing.
    """
    path = os.path.join(vocab, VOCAB) if fs.path(vocab).is_dir() else vocab
    if not fs.is_file(path):
        raise DataError(f"--vocab {vocab}: {path} does not exist (expected a WordPiece vocab.txt, "
                        "or a directory holding one such as an import made by python -m "
                        "bertjax.convert --from=hf); check the path")
    try:
        settings = wordpiece_lib.read_tokenizer_config(os.path.dirname(path))
        with fs.path(path).open("r") as f:  # UTF-8
            tokens = [line.rstrip("\n") for line in f]
    except (OSError, ValueError) as e:  # ValueError: a config that is not JSON, bytes not UTF-8
        raise DataError(f"--vocab {vocab}: cannot read {path} or the tokenizer_config.json "
                        f"beside it ({str(e).splitlines()[0][:120]}); pass the vocabulary of a "
                        "BERT checkpoint") from None
    if do_lower_case is not None:
        settings["do_lower_case"] = do_lower_case
    if settings.get("do_lower_case") is None:
        raise DataError(f"--vocab {vocab}: nothing beside {path} says whether the model is cased "
                        "(expected a tokenizer_config.json with do_lower_case); pass "
                        "--do_lower_case=true for an uncased vocabulary or false for a cased one")
    first: dict[str, int] = {}
    for i, token in enumerate(tokens):
        if token in first:
            raise DataError(f"--vocab {vocab}: {path} lists {token!r} twice (lines {first[token] + 1} "
                            f"and {i + 1}; expected each token once, the line number being its "
                            "id); pass the checkpoint's own vocab.txt")
        first[token] = i
    absent = [t for t in wordpiece_lib.SPECIAL_TOKENS if t not in first]
    if absent:
        raise DataError(f"--vocab {vocab}: {path} lacks the special tokens {absent} (expected "
                        f"all of {list(wordpiece_lib.SPECIAL_TOKENS)}, as every BERT vocabulary "
                        "has); pass a BERT WordPiece vocab.txt")
    return path, {"do_lower_case": bool(settings["do_lower_case"]),
                  "strip_accents": settings.get("strip_accents"),
                  "tokenize_chinese_chars": bool(settings.get("tokenize_chinese_chars", True))}


def _casing_of(directory: str) -> dict:
    """The WordPiece casing settings a directory's tokenizer_config.json records."""
    settings = wordpiece_lib.read_tokenizer_config(directory)
    return {"do_lower_case": settings.get("do_lower_case"),
            "strip_accents": settings.get("strip_accents"),
            "tokenize_chinese_chars": settings.get("tokenize_chinese_chars", True)}


def _get_wordpiece(cfg: PrepareConfig) -> wordpiece_lib.WordPieceTokenizer:
    """--vocab: the vocabulary and its casing copied into --output (vocab.txt and the HF
    tokenizer files), or, on a rerun, checked to be those it was started with."""
    source, settings = wordpiece_source(cfg.vocab, cfg.do_lower_case)
    path = os.path.join(cfg.output, VOCAB)
    if fs.path(path).exists() and fs.path(os.path.join(cfg.output,
                                                       "tokenizer_config.json")).exists():
        if _sha256(path) != _sha256(source) or _casing_of(cfg.output) != settings:
            raise DataError(f"--output {cfg.output} was prepared with another WordPiece "
                            f"vocabulary or casing ({_casing_of(cfg.output)}) than --vocab "
                            f"{cfg.vocab} ({settings}); use a new --output")
    else:  # vocab.txt first, the casing last: a directory without the casing is rewritten
        wordpiece_lib.write_tokenizer_files(cfg.output, source, **settings)
    return load_tokenizer(path)


def _get_tokenizer(cfg: PrepareConfig, sources: list[_Source]) -> Any:
    if cfg.vocab:
        return _get_wordpiece(cfg)
    path = os.path.join(cfg.output, TOKENIZER)
    if cfg.tokenizer:
        tok = tok_lib.Tokenizer.load(cfg.tokenizer)
        if not fs.path(path).exists():
            tok.save(path)
        elif tok_lib.Tokenizer.load(path).sha256() != tok.sha256():
            raise DataError(f"{path} differs from --tokenizer {cfg.tokenizer}; use a new --output")
        return tok_lib.Tokenizer.load(path)
    if fs.path(path).exists():
        return tok_lib.Tokenizer.load(path)  # a rerun keeps the tokenizer it started with
    if cfg.num_workers > 1:
        raise DataError(f"{cfg.num_workers} workers need one shared tokenizer, and {path} does not "
                        "exist; run once with --tokenizer_only (one worker), then start the "
                        "workers")
    print(f"training a {cfg.tokenizer_type} tokenizer, vocab_size {cfg.vocab_size}",
          file=sys.stderr)
    tok = tok_lib.train_tokenizer(_tokenizer_sentences(sources, cfg.tokenizer_sentences),
                                  cfg.vocab_size, cfg.tokenizer_type, cfg.processes)
    if tok.vocab_size < cfg.vocab_size:
        print(f"the text supports only {tok.vocab_size} pieces (asked for {cfg.vocab_size}); the "
              "real size is recorded in metadata.json", file=sys.stderr)
    tok.save(path)
    return tok


def prepare(cfg: PrepareConfig, progress: Callable[..., Any] | None = None) -> dict | None:
    """Runs (or resumes) this worker's share of the preparation.

    Args:
      cfg: the run's settings.
      progress: a progress bar factory, called as ``progress(total, unit, desc)`` (the
        commands pass bertjax.progress.bar); None: no bar.

    Returns:
      The metadata dict once every shard of every worker is complete, else None (other workers
      still have shards to write).
    """
    _check_config(cfg)
    sources, description = _resolve_sources(cfg)
    num_shards = len(sources)
    fs.path(os.path.join(cfg.output, "shards")).mkdir(parents=True, exist_ok=True)
    _claim_output(cfg, num_shards)
    tok = _get_tokenizer(cfg, sources)
    if cfg.tokenizer_only:
        return None
    mine = [s for s in range(num_shards) if s % cfg.num_workers == cfg.worker_index]
    for s in mine:  # partial files of an interrupted run of this worker
        pattern = f"*-{s:05d}-of-{num_shards:05d}.tfrecord.tmp-*"
        for stale in fs.glob(os.path.join(cfg.output, pattern)):
            fs.path(stale).unlink()
    todo = [s for s in mine if _shard_done(cfg.output, s) is None]
    print(f"worker {cfg.worker_index}/{cfg.num_workers}: {len(mine)} of {num_shards} shards, "
          f"{len(mine) - len(todo)} already complete", file=sys.stderr)
    tok_file = os.path.join(cfg.output, VOCAB if cfg.vocab else TOKENIZER)
    jobs = [_Job(s, num_shards, sources[s], cfg.output, tok_file, cfg.eval_fraction)
            for s in todo]
    _run_jobs(jobs, cfg.processes or os.cpu_count() or 1, progress)
    records = [_shard_done(cfg.output, s) for s in range(num_shards)]
    if any(r is None for r in records):
        return None
    return _write_metadata(cfg, description, tok, records)


def _run_jobs(jobs: list[_Job], processes: int, progress: Callable[..., Any] | None) -> None:
    """Runs the shard jobs (in a pool of ``processes`` when there are several), with a bar of
    shards done and training tokens written when ``progress`` makes one."""
    bar = progress(len(jobs), "shard", "prepare") if progress is not None and jobs else None
    tokens = 0

    def done(record: dict) -> None:
        nonlocal tokens
        tokens += record["train"]["tokens"]
        if bar is not None:
            bar.update(1)
            bar.set_postfix(train_tokens=f"{tokens:,}")

    try:  # the bar is closed first: an error prints on a line of its own
        if processes <= 1 or len(jobs) <= 1:
            for job in jobs:  # in-process: also what tests use with tfds.testing.mock_data
                done(_run_job(job))
        else:
            # spawn, not fork: the parent may hold TensorFlow threads, which fork does not
            # copy safely.
            with multiprocessing.get_context("spawn").Pool(min(processes, len(jobs))) as pool:
                for record in pool.imap_unordered(_run_job, jobs):
                    done(record)
    finally:
        if bar is not None:
            bar.close()


def _write_metadata(cfg: PrepareConfig, description: str, tok: Any,
                    records: list[dict]) -> dict:
    splits = {}
    for split in ("train", "eval"):
        shards = [r[split] for r in records]
        totals = {k: sum(s[k] for s in shards)
                  for k in ("documents", "sentences", "tokens", "bytes")}
        splits[split] = {"shards": shards, **totals}
    meta = {
        "format": FORMAT, "input": description, "tokenizer": TOKENIZER,
        "tokenizer_sha256": "" if cfg.vocab else tok.sha256(), "tokenizer_type": cfg.tokenizer_type if not cfg.tokenizer
        else "given", "vocab_size": tok.vocab_size, "requested_vocab_size": cfg.vocab_size,
        "special_ids": dict(tok_lib.SPECIAL_TOKENS), "num_shards": len(records),
        "eval_fraction": cfg.eval_fraction, "splits": splits,
    }
    if cfg.vocab:  # the ids are the imported model's: its vocabulary, casing and special ids
        meta.update(tokenizer=VOCAB, tokenizer_sha256=_sha256(os.path.join(cfg.output, VOCAB)),
                    tokenizer_type=WORDPIECE, requested_vocab_size=tok.vocab_size,
                    special_ids=tok.special_ids, wordpiece=_casing_of(cfg.output))
    _write_json(os.path.join(cfg.output, METADATA), meta)
    return meta


def load_metadata(data_dir: str) -> dict:
    """Reads metadata.json of a prepared directory and checks its shape; DataError if it is
    missing (an incomplete preparation) or damaged.

    Args:
      data_dir: directory written by `prepare`.

    Returns:
      The metadata dict: every key the readers use is present with the right type, and every
      file it names is a plain name inside ``data_dir``.
    """
    root = fs.path(data_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"{data_dir} is a file (expected the directory python -m bertjax.prepare "
                        f"wrote, which holds {METADATA}); pass that directory")
    path = os.path.join(data_dir, METADATA)
    if not fs.path(path).exists():
        raise DataError(f"{data_dir} has no {METADATA}, so its preparation is incomplete or it is "
                        "not a prepared directory; (re)run python -m bertjax.prepare --output "
                        f"{data_dir} with the same flags")
    meta = _read_json(path, f"the directory is damaged: {_DAMAGED}")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DataError(f"{path} has format {found!r}, expected {FORMAT!r}; prepare "
                        "the data again with this version of bertjax")
    problem = _metadata_problem(meta)
    if problem:
        raise DataError(f"{path} is damaged: {problem}; {_DAMAGED}")
    return meta


def _metadata_problem(meta: dict) -> str | None:
    """What is wrong with the shape of a metadata dict (None when nothing is)."""
    def plain_name(value: Any) -> bool:  # a file inside the directory, never ../ or /abs
        return isinstance(value, str) and value not in ("", ".", "..") and \
            os.path.basename(value) == value and "/" not in value

    for key, kind in (("tokenizer", str), ("tokenizer_sha256", str), ("vocab_size", int),
                      ("num_shards", int), ("splits", dict)):
        if key not in meta:
            return f"it has no {key!r}"
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            return f"{key} is {meta[key]!r}, expected {kind.__name__}"
    if not plain_name(meta["tokenizer"]):
        return f"tokenizer is {meta['tokenizer']!r}, expected a file name inside the directory"
    if not _SHA256.fullmatch(meta["tokenizer_sha256"]):
        return f"tokenizer_sha256 is {meta['tokenizer_sha256']!r}, expected 64 hex digits"
    if meta["vocab_size"] <= tok_lib.NUM_SPECIAL:
        return f"vocab_size is {meta['vocab_size']}, expected more than {tok_lib.NUM_SPECIAL}"
    special = meta.get("special_ids")  # the pipeline reads [CLS] [SEP] [PAD] [MASK] from here
    if special is not None and (not isinstance(special, dict) or set(special) != set(
            tok_lib.SPECIAL_TOKENS) or not all(isinstance(v, int) and not isinstance(v, bool) and
                                               0 <= v < meta["vocab_size"]
                                               for v in special.values())):
        return (f"special_ids is {special!r}, expected the ids of {list(tok_lib.SPECIAL_TOKENS)} "
                f"below vocab_size={meta['vocab_size']}")
    if meta.get("tokenizer_type") == WORDPIECE and not isinstance(meta.get(WORDPIECE), dict):
        return f"{WORDPIECE} is {meta.get(WORDPIECE)!r}, expected the casing settings object"
    for split in ("train", "eval"):
        shards = meta["splits"].get(split, {}).get("shards") \
            if isinstance(meta["splits"].get(split), dict) else None
        if not isinstance(shards, list) or len(shards) != meta["num_shards"]:
            return f"splits.{split}.shards is not a list of num_shards={meta['num_shards']} shards"
        for i, shard in enumerate(shards):
            where = f"splits.{split}.shards[{i}]"
            if not isinstance(shard, dict):
                return f"{where} is {shard!r}, expected an object"
            for key in ("shard", "documents", "bytes"):
                value = shard.get(key)
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    return f"{where}.{key} is {value!r}, expected a count"
            if not plain_name(shard.get("file")):
                return f"{where}.file is {shard.get('file')!r}, expected a file name inside the " \
                       "directory"
            if not isinstance(shard.get("sha256"), str) or not _SHA256.fullmatch(shard["sha256"]):
                return f"{where}.sha256 is {shard.get('sha256')!r}, expected 64 hex digits"
    return None


def shard_files(data_dir: str, meta: dict, split: str) -> list[str]:
    """The paths of a split's shards, each checked to be a file of the size metadata records
    (one stat each: cheap enough for every start of a run); DataError names the first that is
    missing, a directory, or of another size."""
    paths = []
    for shard in meta["splits"][split]["shards"]:
        path = os.path.join(data_dir, shard["file"])
        if fs.path(path).is_dir():
            raise DataError(f"{path} is a directory (expected the TFRecord shard {METADATA} names, "
                            f"{shard['bytes']} bytes); {_DAMAGED}")
        if not fs.is_file(path):
            raise DataError(f"{path} is missing (expected the TFRecord shard {METADATA} names, "
                            f"{shard['bytes']} bytes: an incomplete copy?); {_DAMAGED}")
        size = fs.size(path)
        if size != shard["bytes"]:
            raise DataError(f"{path} has {size} bytes, {METADATA} records {shard['bytes']} (an "
                            f"incomplete copy or a damaged file); {_DAMAGED}")
        paths.append(path)
    return paths


def check_tokenizer(data_dir: str, meta: dict) -> int:
    """Checks a prepared directory's tokenizer against metadata: its sha256 (a truncated or
    replaced model), its piece count (an edited vocab_size, which would let ids outside the
    model's embedding table through) and, for WordPiece, the casing the shards were made with.

    Returns:
      The tokenizer's piece count (a WordPiece vocabulary's is counted, not loaded).
    """
    path = os.path.join(data_dir, meta["tokenizer"])
    if not fs.is_file(path):
        raise DataError(f"{path} is missing or not a file (expected the tokenizer {METADATA} "
                        f"names); copy the directory again or prepare the data anew")
    try:
        digest = _sha256(path)
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror}; expected the tokenizer "
                        f"{METADATA} names); fix its permissions") from None
    if digest != meta["tokenizer_sha256"]:
        raise DataError(f"{path} does not match {METADATA} (sha256 {digest[:12]}..., recorded "
                        f"{meta['tokenizer_sha256'][:12]}...: the file is damaged or was "
                        "replaced, and the shards' ids belong to the recorded one); copy it again "
                        "from where the data was prepared, or prepare the data anew")
    if meta.get("tokenizer_type") == WORDPIECE:
        casing = _casing_of(data_dir)
        if casing != meta.get(WORDPIECE):
            raise DataError(f"{os.path.join(data_dir, 'tokenizer_config.json')} says {casing} "
                            f"but {METADATA} records {meta.get(WORDPIECE)}, the casing the shards "
                            "were tokenized with; copy the directory again or prepare it anew")
        count = len(wordpiece_lib.load_vocab(path))
    else:
        count = tok_lib.Tokenizer.load(path).vocab_size
    if count != meta["vocab_size"]:
        raise DataError(f"{os.path.join(data_dir, METADATA)} says vocab_size {meta['vocab_size']} "
                        f"but {path} has {count} pieces (expected equal: was the metadata "
                        f"edited?); set vocab_size back to {count} there, or rerun the "
                        "prepare command that made it")
    return count


def tokenizer_difference(meta: dict, kind: str, where: str) -> str | None:
    """How a prepared directory's tokenizer differs from the one a model was trained with.

    Args:
      meta: the directory's metadata (``load_metadata``).
      kind, where: the model's tokenizer, as bertjax.rundir names it: ("wordpiece", a directory
        holding vocab.txt and its casing) or ("sentencepiece", a .model file).

    Returns:
      None when the data's ids are the model's (the same vocabulary file, and casing where the
      model records one), else what differs, in a few words.
    """
    if kind == WORDPIECE:
        vocab = os.path.join(where, VOCAB)
        if meta.get("tokenizer_type") != WORDPIECE:
            return (f"the data were tokenized with a sentencepiece model, the model reads the "
                    f"WordPiece vocabulary {vocab}")
        if _sha256(vocab) != meta["tokenizer_sha256"]:
            return f"the data's WordPiece vocabulary is not {vocab}"
        casing = _casing_of(where)
        if casing["do_lower_case"] is not None and casing != meta.get(WORDPIECE):
            return (f"the data were tokenized with casing {meta.get(WORDPIECE)}, the model with "
                    f"{casing}")
        return None
    if meta.get("tokenizer_type") == WORDPIECE:
        return (f"the data were tokenized with a WordPiece vocabulary, the model reads the "
                f"sentencepiece model {where}")
    if _sha256(where) != meta["tokenizer_sha256"]:
        return f"the data's sentencepiece model is not {where}"
    return None


def check_prepared(data_dir: str, model_vocab_size: int | None = None) -> dict:
    """What pre-training checks before it compiles: metadata.json well formed, every shard
    present with its recorded size, the tokenizer's sha256 and piece count as recorded, and a
    model embedding table large enough for every id. Reads no records: stats and one sha256.

    Args:
      data_dir: a prepared directory.
      model_vocab_size: the model's vocab_size (rows of its embedding table), if known.

    Returns:
      The metadata dict.
    """
    meta = load_metadata(data_dir)
    for split in ("train", "eval"):
        shard_files(data_dir, meta, split)
    count = check_tokenizer(data_dir, meta)
    if model_vocab_size is not None and count > model_vocab_size:
        path = os.path.join(data_dir, meta["tokenizer"])
        if meta.get("tokenizer_type") == WORDPIECE:
            raise DataError(f"the WordPiece vocabulary {path} has {count} tokens but the model "
                            f"vocab_size is {model_vocab_size} (expected model >= vocabulary); "
                            "continue from the model that vocabulary belongs to "
                            "(--config.init_from=its import)")
        tok_lib.Tokenizer.load(path).check_model_vocab(model_vocab_size)
    return meta


def verify(data_dir: str) -> int:
    """Checks the tokenizer and every file metadata.json names: the tokenizer's sha256 and piece
    count, every shard's sha256, and every record (parsed, counted against the metadata);
    DataError names the first bad file.

    Args:
      data_dir: a prepared directory.

    Returns:
      The number of documents read.
    """
    meta = load_metadata(data_dir)
    check_tokenizer(data_dir, meta)
    total = 0
    for split in ("train", "eval"):
        for shard in meta["splits"][split]["shards"]:
            path = os.path.join(data_dir, shard["file"])
            if not fs.is_file(path):
                raise DataError(f"{path} is missing or not a file (expected the TFRecord shard "
                                f"{METADATA} names); {_DAMAGED}")
            if _sha256(path) != shard["sha256"]:
                raise DataError(f"{path}: its sha256 differs from {METADATA} (the file is "
                                "corrupt or was changed); delete it and "
                                f"shards/{shard['shard']:05d}.json, then rerun prepare with the "
                                "same flags")
            found = records.read_all_records(path)
            if found != shard["documents"]:
                raise DataError(f"{path} holds {found} records but {METADATA} says "
                                f"{shard['documents']} documents (was the metadata edited?); "
                                f"{_DAMAGED}")
            total += found
    return total
