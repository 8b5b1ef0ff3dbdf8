"""Raw text or a TFDS dataset -> tokenized document shards (TFRecord) + metadata.json.

Layout of the output directory:

  tokenizer.model                   sentencepiece model (specials at ids 0..4)
  train-SSSSS-of-NNNNN.tfrecord     training documents of shard S
  eval-SSSSS-of-NNNNN.tfrecord      held-out documents of shard S (chosen by a hash of the text)
  shards/SSSSS.json                 per-shard completion record: counts, sizes, sha256
  prepare_config.json               the settings the directory was started with
  metadata.json                     written last, once every shard is complete: marks the whole
                                    directory complete; the pipeline reads only this

Each record is one document: `tokens` (int64, all sentences concatenated), `sentence_lengths`
(int64, one per sentence) and `doc_id` (first 63 bits of the sha256 of the document's text).

The work unit is the shard: shard S reads only its own byte range of the input (see text.py) or
its own slice of the TFDS split, so workers and processes never read the same document. A shard's
files are written under temporary names and renamed; its JSON record is renamed into place after
them, so a rerun after an interruption redoes exactly the shards without a record. Shard S belongs
to worker S % num_workers; the worker that completes the last shard writes metadata.json.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import multiprocessing
import os
import sys
from typing import Any, Iterator

from bertjax.data import records
from bertjax.data import text
from bertjax.data import tokenizer as tok_lib
from bertjax.data.errors import DataError

FORMAT = "bertjax-documents/1"
METADATA = "metadata.json"
TOKENIZER = "tokenizer.model"
_SHARD_BYTES = 32 << 20  # automatic shard count: about one shard per 32 MB of text



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
    import tensorflow_datasets as tfds

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
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: str, value: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _init_process() -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # preparation never needs an accelerator
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _run_job(job: _Job) -> dict:
    """Tokenizes one shard's documents and writes its train/eval files and completion record."""
    _init_process()
    import tensorflow as tf

    tok = tok_lib.Tokenizer.load(job.tokenizer_path)
    stats, writers, tmp = {}, {}, {}
    for split in ("train", "eval"):
        final = os.path.join(job.output, shard_name(split, job.shard, job.num_shards))
        tmp[split] = f"{final}.tmp-{os.getpid()}"
        writers[split] = tf.io.TFRecordWriter(tmp[split])
        stats[split] = {"file": os.path.basename(final), "shard": job.shard, "documents": 0,
                        "sentences": 0, "tokens": 0}
    for lines in _documents(job.source):
        doc_id = document_hash("\n".join(lines))
        sentences = [ids for ids in tok.encode(text.document_sentences(lines)) if ids]
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
        writers[split].write(tf.train.Example(
            features=tf.train.Features(feature=feature)).SerializeToString())
        s = stats[split]
        s["documents"] += 1
        s["sentences"] += len(sentences)
        s["tokens"] += sum(len(ids) for ids in sentences)
    for split in ("train", "eval"):
        writers[split].close()
        stats[split]["bytes"] = os.path.getsize(tmp[split])
        stats[split]["sha256"] = _sha256(tmp[split])
        os.replace(tmp[split], os.path.join(job.output, stats[split]["file"]))
    record = {"shard": job.shard, **stats}
    _write_json(os.path.join(job.output, "shards", f"{job.shard:05d}.json"), record)
    return record


def _shard_done(output: str, shard: int) -> dict | None:
    """The shard's completion record if it and the files it lists are in place, else None."""
    path = os.path.join(output, "shards", f"{shard:05d}.json")
    try:
        with open(path) as f:
            record = json.load(f)
        for split in ("train", "eval"):
            path = os.path.join(output, record[split]["file"])
            if os.path.getsize(path) != record[split]["bytes"]:
                return None
    except (OSError, ValueError, KeyError):
        return None
    return record


def _resolve_sources(cfg: PrepareConfig) -> tuple[list[_Source], str]:
    """Validates the input and assigns it to shards: (per-shard sources, input description)."""
    if cfg.input.startswith("tfds:"):
        parts = cfg.input[5:].split(":")
        name, split = parts[0], (parts[1] if len(parts) > 1 else "train")
        import tensorflow_datasets as tfds

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

        os.makedirs(cfg.output, exist_ok=True)
        path = os.path.join(cfg.output, "embedded_corpus.txt")
        if not os.path.exists(path):
            corpus.write_embedded_corpus(path, max_documents=cfg.max_documents)
        files = [path]
    else:
        files = text.expand_inputs(cfg.input)
    sizes = [text.check_text_file(f) for f in files]
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


def _claim_output(cfg: PrepareConfig, num_shards: int) -> None:
    """Records the settings, or checks that a rerun into the same directory uses the same ones."""
    settings = {"input": cfg.input, "num_shards": num_shards, "eval_fraction": cfg.eval_fraction,
                "num_workers": cfg.num_workers, "max_documents": cfg.max_documents}
    path = os.path.join(cfg.output, "prepare_config.json")
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if changed:
            raise DataError(f"--output {cfg.output} was started with other settings (was, now): "
                            f"{changed}; rerun with the same flags or use a new --output")
    else:
        _write_json(path, settings)


def _get_tokenizer(cfg: PrepareConfig, sources: list[_Source]) -> tok_lib.Tokenizer:
    path = os.path.join(cfg.output, TOKENIZER)
    if cfg.tokenizer:
        tok = tok_lib.Tokenizer.load(cfg.tokenizer)
        if not os.path.exists(path):
            tok.save(path)
        elif tok_lib.Tokenizer.load(path).sha256() != tok.sha256():
            raise DataError(f"{path} differs from --tokenizer {cfg.tokenizer}; use a new --output")
        return tok_lib.Tokenizer.load(path)
    if os.path.exists(path):
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


def prepare(cfg: PrepareConfig) -> dict | None:
    """Runs (or resumes) this worker's share of the preparation.

    Args:
      cfg: the run's settings.

    Returns:
      The metadata dict once every shard of every worker is complete, else None (other workers
      still have shards to write).
    """
    _check_config(cfg)
    sources, description = _resolve_sources(cfg)
    num_shards = len(sources)
    os.makedirs(os.path.join(cfg.output, "shards"), exist_ok=True)
    _claim_output(cfg, num_shards)
    tok = _get_tokenizer(cfg, sources)
    if cfg.tokenizer_only:
        return None
    mine = [s for s in range(num_shards) if s % cfg.num_workers == cfg.worker_index]
    for s in mine:  # partial files of an interrupted run of this worker
        pattern = f"*-{s:05d}-of-{num_shards:05d}.tfrecord.tmp-*"
        for stale in glob.glob(os.path.join(cfg.output, pattern)):
            os.remove(stale)
    todo = [s for s in mine if _shard_done(cfg.output, s) is None]
    print(f"worker {cfg.worker_index}/{cfg.num_workers}: {len(mine)} of {num_shards} shards, "
          f"{len(mine) - len(todo)} already complete", file=sys.stderr)
    jobs = [_Job(s, num_shards, sources[s], cfg.output, os.path.join(cfg.output, TOKENIZER),
                 cfg.eval_fraction) for s in todo]
    _run_jobs(jobs, cfg.processes or os.cpu_count() or 1)
    records = [_shard_done(cfg.output, s) for s in range(num_shards)]
    if any(r is None for r in records):
        return None
    return _write_metadata(cfg, description, tok, records)


def _run_jobs(jobs: list[_Job], processes: int) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="shard", file=sys.stderr, disable=not jobs)
    tokens = 0
    if processes <= 1 or len(jobs) <= 1:
        for job in jobs:  # in-process: also what tests use with tfds.testing.mock_data
            tokens += _run_job(job)["train"]["tokens"]
            bar.update(1)
            bar.set_postfix(train_tokens=tokens)
    else:
        # spawn, not fork: the parent may hold TensorFlow threads, which fork does not copy safely.
        with multiprocessing.get_context("spawn").Pool(min(processes, len(jobs))) as pool:
            for record in pool.imap_unordered(_run_job, jobs):
                tokens += record["train"]["tokens"]
                bar.update(1)
                bar.set_postfix(train_tokens=tokens)
    bar.close()


def _write_metadata(cfg: PrepareConfig, description: str, tok: tok_lib.Tokenizer,
                    records: list[dict]) -> dict:
    splits = {}
    for split in ("train", "eval"):
        shards = [r[split] for r in records]
        totals = {k: sum(s[k] for s in shards)
                  for k in ("documents", "sentences", "tokens", "bytes")}
        splits[split] = {"shards": shards, **totals}
    meta = {
        "format": FORMAT, "input": description, "tokenizer": TOKENIZER,
        "tokenizer_sha256": tok.sha256(), "tokenizer_type": cfg.tokenizer_type if not cfg.tokenizer
        else "given", "vocab_size": tok.vocab_size, "requested_vocab_size": cfg.vocab_size,
        "special_ids": dict(tok_lib.SPECIAL_TOKENS), "num_shards": len(records),
        "eval_fraction": cfg.eval_fraction, "splits": splits,
    }
    _write_json(os.path.join(cfg.output, METADATA), meta)
    return meta


def load_metadata(data_dir: str) -> dict:
    """Reads metadata.json of a prepared directory; DataError if it is missing (incomplete).

    Args:
      data_dir: directory written by `prepare`.

    Returns:
      The metadata dict.
    """
    path = os.path.join(data_dir, METADATA)
    if not os.path.exists(path):
        raise DataError(f"{data_dir} has no {METADATA}, so its preparation is incomplete or it is "
                        "not a prepared directory; (re)run python -m bertjax.prepare --output "
                        f"{data_dir} with the same flags")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}; prepare "
                        "the data again with this version of bertjax")
    return meta


def verify(data_dir: str) -> int:
    """Checks every shard's sha256 and parses every record; DataError names the first bad file.

    Args:
      data_dir: a prepared directory.

    Returns:
      The number of documents read.
    """
    meta = load_metadata(data_dir)
    total = 0
    for split in ("train", "eval"):
        for shard in meta["splits"][split]["shards"]:
            path = os.path.join(data_dir, shard["file"])
            if not os.path.exists(path) or _sha256(path) != shard["sha256"]:
                raise DataError(f"{path} is missing or its sha256 differs from {METADATA} (the "
                                "file is corrupt or was changed); delete it and "
                                f"shards/{shard['shard']:05d}.json, then rerun prepare with the "
                                "same flags")
            total += records.read_all_records(path)
    return total
