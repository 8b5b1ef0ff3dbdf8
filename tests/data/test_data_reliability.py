"""Bad inputs to data preparation and to pre-training's data config: one line, nothing written.

Each case runs the command as a user does (``tests/commands.py``) and checks the contract: exit
2, exactly one ``error:`` line naming the file or value, what was expected and the fix, no
traceback, and the directories involved unchanged (checksums before == after; a refused
pre-training run creates no workdir). Damaged prepared directories are copies of the session's
``prepared`` fixture; pre-training refuses them before it compiles, in about a second.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from bertjax.data import prepare as prepare_lib
from bertjax.data import text
from bertjax.data.errors import DataError
from tests.commands import assert_one_error, checksums, run

# The prepared fixture's settings as flags (tests/data/conftest.py), and a small model for it.
PREPARE_AGAIN = ["--vocab_size=1000", "--num_shards=4", "--eval_fraction=0.05", "--processes=1"]
PRETRAIN = ["--config.model.vocab_size=1000", "--config.global_batch_size=16",
            "--config.eval_batch_size=16", "--config.max_seq_length=64",
            "--config.max_predictions=10", "--config.total_steps=2",
            "--config.optim.warmup_steps=1", "--config.progress_bar=False"]


@pytest.fixture
def copy(prepared, tmp_path):
    """A private copy of the prepared directory, to damage."""
    out = tmp_path / "prepared"
    shutil.copytree(prepared, out)
    return out


def _meta(d) -> dict:
    return json.loads((d / "metadata.json").read_text())


def _set_meta(d, meta) -> None:
    (d / "metadata.json").write_text(json.dumps(meta))


def _pretrain_refuses(tmp_path, data, *fragments, source="prepared", extra=()):
    """pretrain on ``data`` stops with one line before it writes anything."""
    workdir = tmp_path / "run"
    before = checksums(str(data)) if os.path.exists(str(data)) else None
    result = run("pretrain", f"--workdir={workdir}", *PRETRAIN, f"--config.data.source={source}",
                 f"--config.data.path={data}", *extra)
    line = assert_one_error(result, *fragments)
    assert not workdir.exists()
    if before is not None:
        assert checksums(str(data)) == before
    return line


# 1. --output names an existing regular file (or a path below one).

@pytest.mark.parametrize("below", [False, True])
def test_output_that_is_a_file(corpus_file, tmp_path, below):
    target = tmp_path / "out.txt"
    target.write_text("not a directory\n")
    before = checksums(str(tmp_path))
    output = target / "sub" if below else target
    result = run("prepare", f"--input={corpus_file}", f"--output={output}", *PREPARE_AGAIN)
    assert_one_error(result, str(target), "is a file" if below else "is an existing file",
                     "another --output")
    assert checksums(str(tmp_path)) == before


# 2. metadata.json damaged: not JSON, a key missing, a wrong type, a file outside the directory.

DAMAGES = {
    "not json": (lambda m: None, "not JSON"),
    "no splits": (lambda m: m.pop("splits"), "it has no 'splits'"),
    "vocab a string": (lambda m: m.update(vocab_size="1000"), "vocab_size is '1000'"),
    "shard outside": (lambda m: m["splits"]["train"]["shards"][0].update(file="../x.tfrecord"),
                      "splits.train.shards[0].file is '../x.tfrecord'"),
    "short shard list": (lambda m: m["splits"]["eval"]["shards"].pop(),
                         "splits.eval.shards is not a list of num_shards=4"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_metadata_is_one_line_for_verify_and_pretrain(copy, tmp_path, damage):
    change, fragment = DAMAGES[damage]
    if damage == "not json":
        (copy / "metadata.json").write_text('{"format": "bertjax-documents/1", ')
    else:
        meta = _meta(copy)
        change(meta)
        _set_meta(copy, meta)
    before = checksums(str(copy))
    line = assert_one_error(run("prepare", "--verify", f"--output={copy}"),
                            str(copy / "metadata.json"), fragment)
    assert "rerun the prepare command" in line
    assert checksums(str(copy)) == before
    _pretrain_refuses(tmp_path, copy, str(copy / "metadata.json"), fragment)


# 3. Bytes that are not UTF-8 anywhere in a file (not only in its first MiB).

def _bad_text(corpus_file, tmp_path, case) -> tuple[str, int, str]:
    """(path, offset of the bad byte, what the message says) of a corpus with one defect."""
    good = open(corpus_file, "rb").read()
    path = tmp_path / "corpus" / f"{case}.txt"
    path.parent.mkdir()
    if case == "latin1 after 1 MiB":
        data = good * 2 + "caf\xe9 au lait\n".encode("latin-1")  # 1.4 MB of UTF-8 first
        offset, what = len(good) * 2 + 3, "not UTF-8 text"
    elif case == "mixed encodings":  # a Latin-1 line between UTF-8 ones
        data = "naïve\n\n".encode() + "na\xefve\n".encode("latin-1") + "café\n\nend\n".encode()
        offset, what = len("naïve\n\n".encode()) + 2, "not UTF-8 text"
    elif case == "cut character at the end":
        data = good + "é".encode()[:1]
        offset, what = len(good), "unexpected end of data"
    else:  # NUL after the first MiB
        data = good * 2 + b"\x00\n"
        offset, what = len(good) * 2, "looks binary"
    path.write_bytes(data)
    return str(path), offset, what


@pytest.mark.parametrize("case", ["latin1 after 1 MiB", "mixed encodings",
                                  "cut character at the end", "NUL after 1 MiB"])
def test_bad_bytes_anywhere_are_refused_with_their_offset(corpus_file, tmp_path, case):
    path, offset, what = _bad_text(corpus_file, tmp_path, case)
    out = tmp_path / "out"
    result = run("prepare", f"--input={path}", f"--output={out}", *PREPARE_AGAIN)
    assert_one_error(result, f"input file {path}", what, f"byte {offset}")
    assert not out.exists()


def test_scan_keeps_memory_bounded_and_counts_documents_across_blocks(tmp_path):
    """A multi-byte character split by the block boundary is fine; a line continuing into the
    next block counts once; a file without blank lines is one document."""
    path = tmp_path / "a.txt"
    path.write_bytes(b"a" * ((1 << 20) - 1) + "é word\n\n".encode() + b"second\n")
    assert text.scan_text_file(str(path), count_documents=5) == text.TextFile(
        os.path.getsize(path), 2)
    path.write_bytes(b"one\ntwo\nthree")
    assert text.scan_text_file(str(path), count_documents=5).documents == 1


# 4. --verify checks the tokenizer too (and the record counts metadata.json states).

@pytest.mark.parametrize("damage", ["truncated tokenizer", "documents edited", "vocab edited"])
def test_verify_checks_the_tokenizer_and_counts(copy, damage):
    if damage == "truncated tokenizer":
        tok = copy / "tokenizer.model"
        tok.write_bytes(tok.read_bytes()[:1000])
        fragments = [str(tok), "does not match metadata.json", "sha256"]
    else:
        meta = _meta(copy)
        if damage == "documents edited":
            shard = meta["splits"]["train"]["shards"][1]
            shard["documents"] += 1
            fragments = [str(copy / shard["file"]), f"{shard['documents']} documents"]
        else:
            meta["vocab_size"] = 900
            fragments = ["vocab_size 900", "has 1000 pieces", "set vocab_size back to 1000"]
        _set_meta(copy, meta)
    before = checksums(str(copy))
    assert_one_error(run("prepare", "--verify", f"--output={copy}"), *fragments)
    assert checksums(str(copy)) == before


# 5. A finished directory rerun with settings that change the output is refused, unchanged;
#    the same settings still resume (nothing to do) and leave every byte as it was.

@pytest.mark.parametrize("change, was, now", [
    (["--vocab_size=500"], "unigram, vocab_size 1000", "unigram, vocab_size 500"),
    (["--tokenizer_type=bpe"], "unigram, vocab_size 1000", "bpe, vocab_size 1000"),
    (["--eval_fraction=0.1"], "0.05", "0.1"),
])
def test_rerun_with_other_settings_is_refused(copy, corpus_file, change, was, now):
    before = checksums(str(copy))
    flags = [f for f in PREPARE_AGAIN if f.split("=")[0] != change[0].split("=")[0]] + change
    result = run("prepare", f"--input={corpus_file}", f"--output={copy}", *flags)
    assert_one_error(result, str(copy), "other settings", was, now, "use another --output")
    assert checksums(str(copy)) == before
    result = run("prepare", f"--input={corpus_file}", f"--output={copy}", *PREPARE_AGAIN)
    assert result.returncode == 0 and "4 already complete" in result.stderr, result.stderr
    assert checksums(str(copy)) == before


def test_rerun_of_an_older_directory_is_checked_against_its_metadata(copy, corpus_file):
    """prepare_config.json written before the tokenizer settings were recorded: the finished
    metadata.json still says which tokenizer was asked for."""
    settings = json.loads((copy / "prepare_config.json").read_text())
    del settings["tokenizer"]
    (copy / "prepare_config.json").write_text(json.dumps(settings))
    before = checksums(str(copy))
    result = run("prepare", f"--input={corpus_file}", f"--output={copy}", *PREPARE_AGAIN[1:],
                 "--vocab_size=2000")
    assert_one_error(result, "other settings", "vocab_size 1000", "vocab_size 2000")
    assert checksums(str(copy)) == before


def test_damaged_prepare_config_is_one_line(copy, corpus_file):
    (copy / "prepare_config.json").write_text("{")
    before = checksums(str(copy))
    result = run("prepare", f"--input={corpus_file}", f"--output={copy}", *PREPARE_AGAIN)
    assert_one_error(result, str(copy / "prepare_config.json"), "not JSON", "another --output")
    assert checksums(str(copy)) == before


def test_tokenizer_only_then_workers(corpus_file, settings, tmp_path):
    """The README's multi-worker recipe: --tokenizer_only (one worker) fixes no worker count,
    so the workers that follow may use theirs; a third count is then refused."""
    out = str(tmp_path / "workers")

    def cfg(**kw):
        return prepare_lib.PrepareConfig(input=corpus_file, output=out, **settings, **kw)

    assert prepare_lib.prepare(cfg(tokenizer_only=True)) is None
    assert prepare_lib.prepare(cfg(num_workers=2, worker_index=1)) is None
    meta = prepare_lib.prepare(cfg(num_workers=2, worker_index=0))
    assert meta is not None and meta["num_shards"] == settings["num_shards"]
    with pytest.raises(DataError, match=r"'num_workers': \(2, 3\)"):
        prepare_lib.prepare(cfg(num_workers=3, worker_index=0))


# 6. and 7. pre-training checks the tokenizer against metadata.json, and both against the
#    model, before it compiles (a truncated tokenizer trained on; an edited vocab gave NaNs).

def test_pretrain_refuses_a_truncated_tokenizer(copy, tmp_path):
    tok = copy / "tokenizer.model"
    tok.write_bytes(tok.read_bytes()[:-100])
    _pretrain_refuses(tmp_path, copy, str(tok), "does not match metadata.json",
                      "prepare the data anew")


def test_pretrain_refuses_metadata_whose_vocab_was_edited(copy, tmp_path):
    meta = _meta(copy)
    meta["vocab_size"] = 900
    _set_meta(copy, meta)
    _pretrain_refuses(tmp_path, copy, "vocab_size 900", "has 1000 pieces",
                      "set vocab_size back to 1000", extra=["--config.model.vocab_size=900"])


def test_pretrain_refuses_a_model_vocab_below_the_tokenizer(prepared, tmp_path):
    """Refused in one line before this pass too, but after the workdir was made, and with
    the model's flag left unnamed; now before anything is written, from the tokenizer itself."""
    _pretrain_refuses(tmp_path, prepared, "has 1000 pieces but the model vocab_size is 900",
                      "--config.model.vocab_size=1000", extra=["--config.model.vocab_size=900"])


@pytest.mark.slow
def test_nonfinite_stop_prints_its_line_after_the_progress_bar(tmp_path):
    """With the progress bar on, the error line starts a line of its own (tqdm is closed
    first); before, it was appended to the bar's last '\\r' update."""
    workdir = tmp_path / "nan"
    result = run("pretrain", f"--workdir={workdir}", "--config.data.source=synthetic",
                 "--config.model.vocab_size=512", "--config.max_seq_length=32",
                 "--config.max_predictions=5", "--config.global_batch_size=16",
                 "--config.eval_batch_size=16", "--config.total_steps=20",
                 "--config.eval_every=100", "--config.checkpoint_every=100",
                 "--config.data.inject_nan_from=2", "--config.max_nonfinite_steps=2",
                 "--config.progress_bar=True", "--config.optim.warmup_steps=1",
                 env={"BERTJAX_PROGRESS": "1"})  # drawn although stderr is captured
    assert "step/s" in result.stderr  # the bar was drawn
    assert_one_error(result, "2 steps in a row")


# 8. More bad inputs.

@pytest.mark.parametrize("damage", ["missing", "zero bytes", "a directory"])
def test_prepared_shard_missing_empty_or_a_directory(copy, tmp_path, damage):
    """A shard that metadata.json names: gone, truncated to zero bytes, or a directory."""
    shard = copy / _meta(copy)["splits"]["eval"]["shards"][2]["file"]
    shard.unlink()
    if damage == "zero bytes":
        shard.write_bytes(b"")
    elif damage == "a directory":
        shard.mkdir()
    fragment = {"missing": "is missing", "zero bytes": "has 0 bytes",
                "a directory": "is a directory"}[damage]
    _pretrain_refuses(tmp_path, copy, str(shard), fragment)
    before = checksums(str(copy))
    assert_one_error(run("prepare", "--verify", f"--output={copy}"), str(shard),
                     "is missing or not a file" if damage != "zero bytes" else "sha256")
    assert checksums(str(copy)) == before


def test_pretrain_data_path_that_is_a_file(prepared, tmp_path):
    shard = os.path.join(prepared, "train-00000-of-00004.tfrecord")
    _pretrain_refuses(tmp_path, shard, f"config.data.path={shard!r} is a file",
                      "config.data.source=bert_tfrecords")


@pytest.mark.parametrize("case", ["no match", "a directory", "zero bytes"])
def test_bert_tfrecords_globs(tmp_path, case):
    """Checked before the workdir is made (a glob of nothing used to fail after it, an empty
    file was reported as 'has features []')."""
    d = tmp_path / "records"
    d.mkdir()
    if case == "no match":
        pattern, fragments = str(d / "*.tfrecord"), ["matches no file"]
    elif case == "a directory":
        (d / "part.tfrecord").mkdir()
        pattern, fragments = str(d / "*.tfrecord"), [str(d / "part.tfrecord"), "is a directory"]
    else:
        (d / "part.tfrecord").write_bytes(b"")
        pattern, fragments = str(d / "*.tfrecord"), [str(d / "part.tfrecord"), "is empty"]
    _pretrain_refuses(tmp_path, pattern, *fragments, source="bert_tfrecords")
    assert sorted(os.listdir(d)) == ([] if case == "no match" else ["part.tfrecord"])


def _prepare_refuses(tmp_path, *args, fragments):
    out = tmp_path / "out"
    before = checksums(str(tmp_path))
    assert_one_error(run("prepare", f"--output={out}", *args), *fragments)
    assert not out.exists() and checksums(str(tmp_path)) == before


def test_input_glob_matching_only_a_directory(tmp_path):
    (tmp_path / "books.txt").mkdir()
    _prepare_refuses(tmp_path, f"--input={tmp_path / 'books.txt'}",
                     fragments=["matches only directories", str(tmp_path / "books.txt" / "*.txt")])


def test_tokenizer_flag_naming_a_directory(corpus_file, prepared, tmp_path):
    _prepare_refuses(tmp_path, f"--input={corpus_file}", f"--tokenizer={prepared}",
                     fragments=[f"tokenizer model {prepared} is a directory", "tokenizer.model"])


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0,
                    reason="root reads a chmod 000 file anyway")
def test_unreadable_input_file(corpus_file, tmp_path):
    path = tmp_path / "locked.txt"
    shutil.copy(corpus_file, path)
    path.chmod(0)
    try:
        _prepare_refuses(tmp_path, f"--input={path}",
                         fragments=[f"input file {path} cannot be read", "Permission denied"])
    finally:
        path.chmod(0o644)


def test_a_file_that_cannot_be_opened_is_one_data_error(tmp_path):
    """The open() failure path of the scan, which the chmod test reaches only without root."""
    with pytest.raises(DataError, match=f"input file {tmp_path} cannot be read") as info:
        text.scan_text_file(str(tmp_path))  # a directory: open() fails as for chmod 000
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("vocab, fragment", [
    ("2147483647", "--vocab_size 2147483647 is out of range"),  # used to train without end
    ("5", "--vocab_size 5 leaves no room"),  # already right: pinned
])
def test_vocab_size_out_of_range(corpus_file, tmp_path, vocab, fragment):
    _prepare_refuses(tmp_path, f"--input={corpus_file}", f"--vocab_size={vocab}",
                     fragments=[fragment])


@pytest.mark.parametrize("content", ["hello world\n", "one\ntwo lines, no blank line\n"])
def test_corpus_of_one_document(tmp_path, content):
    """Prepared before (vocab 13, one training document, no eval split) and failed later."""
    path = tmp_path / "tiny.txt"
    path.write_text(content)
    _prepare_refuses(tmp_path, f"--input={path}", "--vocab_size=1000",
                     fragments=["holds only 1 document", "blank line between documents"])


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_utf16_or_32_file_names_its_encoding(tmp_path, encoding):
    path = tmp_path / "wide.txt"
    path.write_bytes("first document\n\nsecond one\n".encode(encoding))  # with its BOM
    label = encoding.upper()
    _prepare_refuses(tmp_path, f"--input={path}",
                     fragments=[str(path), f"is {label} text", f"iconv -f {label} -t UTF-8"])


def test_utf8_bom_is_skipped_not_trained_on(tmp_path):
    """A UTF-8 byte-order mark is accepted and never reaches a document (it used to stick to
    the first line as U+FEFF)."""
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf\nFirst line.\n\nSecond document.\n")
    assert text.scan_text_file(str(path), count_documents=2).documents == 2
    pieces = [text.ByteRange(str(path), 0, 2), text.ByteRange(str(path), 2, path.stat().st_size)]
    docs = [doc for p in pieces for doc in text.read_documents(p)]
    assert docs == [["First line."], ["Second document."]]


def test_verify_of_a_missing_directory_is_one_line(tmp_path):
    """Already right: pinned."""
    assert_one_error(run("prepare", "--verify", f"--output={tmp_path / 'none'}"),
                     "has no metadata.json", "preparation is incomplete")
    assert not (tmp_path / "none").exists()
