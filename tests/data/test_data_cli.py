"""`python -m bertjax.prepare`: bad inputs stop with one line and exit 2; the happy path resumes."""

from __future__ import annotations

import os
import shutil

import pytest


def _assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.mark.parametrize("case", ["no_match", "empty", "binary", "tiny_vocab"])
def test_bad_inputs(case, cli, corpus_file, tmp_path):
    out = tmp_path / "out"
    vocab = "1000"
    if case == "no_match":
        pattern, needles = str(tmp_path / "missing" / "*.txt"), ["matches no file", "missing"]
    elif case == "empty":
        shutil.copy(corpus_file, tmp_path / "a.txt")
        (tmp_path / "b.txt").write_text("\n\n")
        pattern, needles = str(tmp_path / "*.txt"), ["b.txt", "is empty"]
    elif case == "binary":
        shutil.copy(corpus_file, tmp_path / "a.txt")
        (tmp_path / "c.txt").write_bytes(bytes(range(256)) * 8)
        pattern, needles = str(tmp_path / "*.txt"), ["c.txt", "binary"]
    else:
        pattern, needles, vocab = corpus_file, ["--vocab_size 3", "special tokens"], "3"
    proc = cli("--input", pattern, "--output", str(out), "--vocab_size", vocab, "--num_shards", "2")
    _assert_one_line_error(proc, *needles)
    assert not (out / "metadata.json").exists()
    assert not out.exists() or not list(out.glob("*.tfrecord"))
    if case == "tiny_vocab":
        proc = cli("--input", pattern, "--output", str(out), "--vocab_size", vocab, "--debug")
        assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_corrupt_tfrecord_is_named(cli, prepared, tmp_path):
    out = tmp_path / "corrupt"
    shutil.copytree(prepared, out)
    victim = out / "train-00001-of-00004.tfrecord"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, broken checksum
    victim.write_bytes(bytes(data))
    _assert_one_line_error(cli("--verify", "--output", str(out)), str(victim), "sha256")
    proc = cli("--verify", "--output", prepared)
    assert proc.returncode == 0 and "all checksums and records OK" in proc.stdout


def test_embedded_corpus_in_parallel_then_resume(cli, tmp_path):
    out = tmp_path / "embedded"
    args = ("--input", "embedded", "--max_documents", "40", "--output", str(out),
            "--vocab_size", "800", "--tokenizer_type", "bpe", "--num_shards", "4",
            "--processes", "2")
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "4 shards, vocab 800" in proc.stdout
    assert (out / "metadata.json").exists() and (out / "embedded_corpus.txt").exists()
    proc = cli(*args)
    assert proc.returncode == 0 and "4 already complete" in proc.stderr, proc.stderr
    assert sorted(os.listdir(out / "shards")) == [f"0000{i}.json" for i in range(4)]
