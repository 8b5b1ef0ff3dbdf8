"""Preparation: metadata and checksums, every document once, resume, workers, TFDS."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import tensorflow_datasets as tfds

from bertjax.data import prepare as prepare_lib
from bertjax.data import text
from bertjax.data.errors import DataError


def corpus_doc_ids(corpus_file: str) -> list[int]:
    size = os.path.getsize(corpus_file)
    return [prepare_lib.document_hash("\n".join(doc))
            for doc in text.read_documents(text.ByteRange(corpus_file, 0, size))]


def test_metadata_counts_and_checksums(prepared, settings, read_shard):
    meta = prepare_lib.load_metadata(prepared)
    assert meta["vocab_size"] == settings["vocab_size"]
    assert meta["num_shards"] == settings["num_shards"]
    assert meta["special_ids"] == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    with open(os.path.join(prepared, meta["tokenizer"]), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == meta["tokenizer_sha256"]
    for split in ("train", "eval"):
        shards = meta["splits"][split]["shards"]
        assert len(shards) == settings["num_shards"]
        for key in ("documents", "sentences", "tokens", "bytes"):
            assert meta["splits"][split][key] == sum(s[key] for s in shards)
        for s in shards:
            path = os.path.join(prepared, s["file"])
            with open(path, "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == s["sha256"]
            assert len(read_shard(path)) == s["documents"]
    assert meta["splits"]["eval"]["documents"] > 0
    assert prepare_lib.verify(prepared) == sum(meta["splits"][s]["documents"]
                                               for s in ("train", "eval"))


def test_every_document_lands_in_exactly_one_shard(prepared, corpus_file, read_shard):
    meta = prepare_lib.load_metadata(prepared)
    got = {split: [i for s in meta["splits"][split]["shards"]
                   for i, _ in read_shard(os.path.join(prepared, s["file"]))]
           for split in ("train", "eval")}
    assert sorted(got["train"] + got["eval"]) == sorted(corpus_doc_ids(corpus_file))
    assert all(prepare_lib.is_eval(i, meta["eval_fraction"]) for i in got["eval"])
    assert not any(prepare_lib.is_eval(i, meta["eval_fraction"]) for i in got["train"])


def test_rerun_redoes_only_incomplete_shards(prepared, corpus_file, settings, tmp_path):
    out = str(tmp_path / "copy")
    shutil.copytree(prepared, out)
    with open(os.path.join(out, "metadata.json")) as f:
        before = json.load(f)
    # An interrupted run: shard 2 has a partial file and no completion record; no metadata yet.
    os.remove(os.path.join(out, "metadata.json"))
    os.remove(os.path.join(out, "shards", "00002.json"))
    stale = os.path.join(out, "train-00002-of-00004.tfrecord.tmp-12345")
    with open(stale, "wb") as f:
        f.write(b"partial")
    with pytest.raises(DataError, match="preparation is incomplete"):
        prepare_lib.load_metadata(out)
    untouched = {name: os.stat(os.path.join(out, name)).st_mtime_ns
                 for name in ("train-00000-of-00004.tfrecord", "train-00003-of-00004.tfrecord")}
    meta = prepare_lib.prepare(prepare_lib.PrepareConfig(input=corpus_file, output=out, **settings))
    assert meta == before
    assert not os.path.exists(stale)
    for name, mtime in untouched.items():
        assert os.stat(os.path.join(out, name)).st_mtime_ns == mtime
    with pytest.raises(DataError, match="other settings"):
        prepare_lib.prepare(prepare_lib.PrepareConfig(input=corpus_file, output=out, num_shards=8))


def test_two_workers_prepare_disjoint_shards(prepared, corpus_file, settings, tmp_path):
    out = str(tmp_path / "workers")
    tokenizer = os.path.join(prepared, "tokenizer.model")

    def cfg(**kw):
        return prepare_lib.PrepareConfig(input=corpus_file, output=out, num_workers=2, **settings,
                                         **kw)

    with pytest.raises(DataError, match="shared tokenizer"):
        prepare_lib.prepare(cfg(worker_index=1))
    assert prepare_lib.prepare(cfg(worker_index=1, tokenizer=tokenizer)) is None
    assert sorted(os.listdir(os.path.join(out, "shards"))) == ["00001.json", "00003.json"]
    assert not os.path.exists(os.path.join(out, "metadata.json"))
    meta = prepare_lib.prepare(cfg(worker_index=0, tokenizer=tokenizer))
    with open(os.path.join(prepared, "metadata.json")) as f:
        single = json.load(f)
    assert meta["splits"] == single["splits"]  # same shards, byte for byte


def test_tfds_input_with_mock_data(tmp_path):
    out = str(tmp_path / "tfds")
    with tfds.testing.mock_data(num_examples=24):
        meta = prepare_lib.prepare(prepare_lib.PrepareConfig(
            input="tfds:lm1b", output=out, vocab_size=120, num_shards=3, eval_fraction=0.0,
            processes=1))
        assert meta["splits"]["train"]["documents"] == 24
        with pytest.raises(DataError, match="no feature 'body'"):
            prepare_lib.prepare(prepare_lib.PrepareConfig(
                input="tfds:lm1b", output=str(tmp_path / "x"), tfds_text_key="body"))
    with pytest.raises(DataError, match="not available locally"):
        prepare_lib.prepare(prepare_lib.PrepareConfig(
            input="tfds:lm1b", output=str(tmp_path / "y"), tfds_data_dir=str(tmp_path / "none")))
