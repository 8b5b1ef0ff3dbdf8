"""Every file path through one path layer (bertjax.data.fs, built on etils.epath): a gs:// path
works wherever a local one does, and nothing on the way is a builtin open, os.path test or glob.

The gs:// stand-in. With TensorFlow installed (as on a pod) epath sends gs:// through its
``PosixGPath`` class and its TensorFlow backend, i.e. tf.io.gfile; tf.data, TFRecordWriter and
tf.summary reach gs:// through the same TensorFlow file systems. TensorFlow also has an
in-memory file system, ``ram://``. ``RamPath`` below registers that scheme with epath as
``PosixGPath`` on the TensorFlow backend: epath's own gs:// code path, every call on the way to
TensorFlow included, only the file system underneath differs. So a ``ram://`` path reaches
everything a gs:// one does (prepare's TFRecord shards, tf.data reading them, TensorBoard
events) except orbax's array data, which orbax writes through tensorstore, whose drivers know
file and gcs but not TensorFlow's ram://. The fine-tuning and embedding runs here therefore keep
their checkpoints in a local directory; every other file of their workdirs and outputs is on
``ram://``. Each test runs in an empty local directory that must stay empty: a path that went
round the layer (os.makedirs("ram://b/x") makes ./ram:/b/x) would land there.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import re
import sys

import numpy as np
import pytest
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath

from bertjax.data import fs
from bertjax.data.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = os.path.join(ROOT, "tests", "finetuning", "files", "finetune")


def _rooted(parts) -> str:
    """"ram://b/x" -> "/ram/b/x": where epath roots a scheme's paths (gs://b is /gs/b)."""
    full = "/".join(os.fspath(p) for p in parts)
    return "/ram/" + full[len("ram://"):] if full.startswith("ram://") else full


@epath.register_path_cls("ram://")  # for the whole test process; no other code uses ram://
class RamPath(gpath.PosixGPath):
    """epath's gs:// path class on TensorFlow's ram:// file system (see the module docstring)."""

    if sys.version_info < (3, 12):
        def __new__(cls, *parts):
            return super().__new__(cls, _rooted(parts))
    else:
        def __init__(self, *parts):
            super().__init__(_rooted(parts))

    @property
    def _uri_scheme(self):
        return "ram" if self.parts[:2] == ("/", "ram") else None

    @property
    def _backend(self):
        return epath_backend.tf_backend  # what epath uses for gs:// with TensorFlow installed


@pytest.fixture
def ram(request, tmp_path, monkeypatch):
    """A fresh ram:// bucket; the test runs in an empty local directory that must stay so."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    root = "ram://" + re.sub(r"\W", "_", request.node.name)
    yield root
    epath.Path(root).rmtree(missing_ok=True)
    assert os.listdir(cwd) == [], "a ram:// path was used as a local one"


def _tree(root: str) -> dict[str, bytes]:
    """{relative path: bytes} of every file under ``root`` (any file system)."""
    out = {}
    for d, _, names in epath.Path(root).walk():
        for name in names:
            p = epath.Path(d) / name
            out[os.fspath(p)[len(root) + 1:]] = p.read_bytes()
    return out


def _put(path: str, data: bytes) -> str:
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(path).write_bytes(data)
    return path


def test_the_stand_in_is_epaths_gs_class_on_tensorflows_file_system(ram):
    import tensorflow as tf

    p = epath.Path(f"{ram}/a/b.txt")
    assert isinstance(p, gpath.PosixGPath) and type(p) is RamPath
    assert (os.fspath(p), os.fspath(p.parent), p.name) == (f"{ram}/a/b.txt", f"{ram}/a", "b.txt")
    assert type(epath.Path("gs://bucket/x")) is gpath.PosixGPath  # gs:// itself untouched
    p.parent.mkdir(parents=True)
    p.write_text("written by epath")
    with tf.io.gfile.GFile(f"{ram}/a/b.txt") as f:  # TensorFlow sees the same file
        assert f.read() == "written by epath"
    assert fs.is_remote(p) and fs.is_file(p) and fs.size(p) == 16 and not fs.is_file(p.parent)


# ----------------------------------------------------------------------------- the layer


def test_glob_on_gs_matches_what_it_matches_locally(ram, tmp_path):
    names = ["in/a1.txt", "in/a2.txt", "in/b.txt", "in/sub/c.txt", "in/sub/d.md", "in/x[1].txt"]
    for root in (ram, str(tmp_path / "local")):
        for name in names:
            _put(f"{root}/{name}", b"text\n")
    patterns = ["in/*.txt", "in/a?.txt", "in/[ab]*.txt", "in/*/*.txt", "in/sub", "in/none*",
                "in/a1.txt", "in/missing.txt"]
    for pattern in patterns:
        remote = sorted(m[len(ram) + 1:] for m in fs.glob(f"{ram}/{pattern}"))
        local = sorted(os.path.relpath(m, tmp_path / "local")
                       for m in fs.glob(str(tmp_path / "local" / pattern)))
        assert remote == local, pattern
    assert len(fs.glob(f"{ram}/in/*.txt")) == 4
    # ** spans directories locally (as glob.glob(recursive=True)); on gs:// it is one line
    assert len(fs.glob(str(tmp_path / "local" / "**" / "*.txt"), recursive=True)) == 5
    with pytest.raises(DataError, match=r"\*\* \(any depth\) works for local paths only") as e:
        fs.glob(f"{ram}/in/**/*.txt", recursive=True)
    assert "\n" not in str(e.value)


def test_atomic_write_is_whole_or_nothing(ram, tmp_path):
    for target in (f"{ram}/out/f.json", str(tmp_path / "out" / "f.json")):
        epath.Path(target).parent.mkdir(parents=True, exist_ok=True)
        fs.write_atomic(target, '{"a": 1}')
        with pytest.raises(RuntimeError):
            with fs.atomic_write(target) as f:
                f.write('{"a": 2, "half')
                raise RuntimeError("killed while writing")
        assert epath.Path(target).read_text() == '{"a": 1}'  # the old file, whole
        assert [p.name for p in epath.Path(target).parent.iterdir()] == ["f.json"]  # no .tmp
        fs.write_atomic(target, b"\x00\x01")
        assert epath.Path(target).read_bytes() == b"\x00\x01"


def test_a_scheme_no_file_system_serves_is_one_line():
    with pytest.raises(DataError, match=r"'nope://b/x': no file system for nope://") as e:
        fs.path("nope://b/x")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------- prepare and pre-training


SETTINGS = {"vocab_size": 400, "num_shards": 2, "eval_fraction": 0.1, "processes": 1}


@pytest.fixture
def corpus_text(ram) -> bytes:
    """The first 60 documents of the embedded corpus, written to gs:// by its own writer."""
    from bertjax.data import corpus

    path = f"{ram}/text/corpus.txt"
    epath.Path(path).parent.mkdir(parents=True)
    written = corpus.write_embedded_corpus(path, max_documents=60)
    data = epath.Path(path).read_bytes()
    assert written["bytes"] == len(data) and written["documents"] == 60
    return data


def _prepare_both(ram, tmp_path, corpus_text) -> tuple[str, str, dict, dict]:
    from bertjax.data import prepare as prepare_lib

    local_in = _put(str(tmp_path / "text" / "corpus.txt"), corpus_text)
    remote, local = f"{ram}/prepared", str(tmp_path / "prepared")
    metas = [prepare_lib.prepare(prepare_lib.PrepareConfig(input=i, output=o, **SETTINGS))
             for i, o in ((f"{ram}/text/*.txt", remote),
                          (os.path.join(os.path.dirname(local_in), "*.txt"), local))]
    return remote, local, metas[0], metas[1]


def test_prepare_writes_gs_as_it_writes_a_local_directory(ram, tmp_path, corpus_text):
    from bertjax.data import prepare as prepare_lib

    remote, local, meta_r, meta_l = _prepare_both(ram, tmp_path, corpus_text)
    assert meta_r["input"] == f"{ram}/text/*.txt"
    assert {**meta_r, "input": ""} == {**meta_l, "input": ""}  # every shard's sha256 included
    files_r, files_l = _tree(remote), _tree(local)
    assert sorted(files_r) == sorted(files_l)
    for name in files_r:  # the same bytes, but where a file names its input (compared above)
        if name not in ("prepare_config.json", "metadata.json"):
            assert files_r[name] == files_l[name], name
    assert not [n for n in files_r if ".tmp" in n]
    assert meta_r["splits"]["train"]["documents"] + meta_r["splits"]["eval"]["documents"] == 60
    # what pre-training and --verify check, read back from gs://
    assert prepare_lib.verify(remote) == 60
    assert prepare_lib.check_prepared(remote, 512) == meta_r
    # a rerun into gs:// resumes: every shard complete, nothing rewritten
    before = {n: hashlib.sha256(b).hexdigest() for n, b in files_r.items()}
    assert prepare_lib.prepare(prepare_lib.PrepareConfig(
        input=f"{ram}/text/*.txt", output=remote, **SETTINGS)) == meta_r
    assert {n: hashlib.sha256(b).hexdigest() for n, b in _tree(remote).items()} == before


def test_bad_gs_data_is_refused_in_one_line_naming_it(ram, tmp_path, corpus_text):
    from bertjax.data import prepare as prepare_lib
    from bertjax.data import records

    remote, _, meta, _ = _prepare_both(ram, tmp_path, corpus_text)
    shard = meta["splits"]["train"]["shards"][0]["file"]
    _put(f"{ram}/damaged/{shard}", b"")
    for name in ("metadata.json", "tokenizer.model"):
        _put(f"{ram}/damaged/{name}", epath.Path(f"{remote}/{name}").read_bytes())
    cases = [
        (lambda: prepare_lib.load_metadata(f"{ram}/nothing"), f"{ram}/nothing has no metadata.json"),
        (lambda: prepare_lib.check_prepared(f"{ram}/damaged"),
         f"{ram}/damaged/{shard} has 0 bytes, metadata.json records"),
        (lambda: records.expand_files(f"{ram}/damaged/*.tfrecord"),
         f"{ram}/damaged/{shard} is empty (0 bytes"),
        (lambda: records.expand_files(f"{ram}/none-*.tfrecord"), "matches no file"),
        (lambda: prepare_lib.prepare(prepare_lib.PrepareConfig(
            input=f"{ram}/text/*.txt", output=f"{remote}/metadata.json", **SETTINGS)),
         f"--output {remote}/metadata.json is an existing file"),
    ]
    for call, fragment in cases:
        with pytest.raises(DataError) as e:
            call()
        assert fragment in str(e.value) and "\n" not in str(e.value)


def test_pretraining_reads_gs_data_as_it_reads_local_data(ram, tmp_path, corpus_text):
    from bertjax import config as config_lib
    from bertjax import inputs
    from bertjax.data import sources

    remote, local, _, _ = _prepare_both(ram, tmp_path, corpus_text)
    batches = []
    for path in (remote, local):
        c = config_lib.base_config()
        c.data.source, c.data.path, c.nsp = "prepared", path, False
        c.model.vocab_size, c.max_seq_length, c.max_predictions = 512, 32, 5
        c.global_batch_size = 8
        inputs.check(c)  # os.path.exists refused gs:// data here before
        batches.append(next(inputs.train_iterator(c)))
    assert sorted(batches[0]) == sorted(batches[1])
    for key in batches[0]:
        np.testing.assert_array_equal(batches[0][key], batches[1][key], err_msg=key)
    assert (batches[0]["input_ids"] > 4).sum() > 100  # real text, not padding
    # the shards as a TFRecord glob: found and opened on gs:// by tf.data
    with pytest.raises(DataError, match="holds bertjax documents; pass its directory"):
        sources.Source(f"{remote}/train-*.tfrecord", "train")


# ------------------------------------------------------------------ fine-tuning and embedding


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A 4-step fine-tuning whose data, tokenizer and workdir are on gs:// (its checkpoints
    in a local directory: see the module docstring), run once for the tests below in an empty
    directory that stays so; (workdir, the local checkpoints' workdir, the run's summary)."""
    from bertjax import checkpoint as ckpt_lib
    from bertjax.finetuning import classify
    from bertjax.finetuning.defaults import finetune_config

    ram, base = "ram://finetuned", tmp_path_factory.mktemp("finetuned")
    for rel in ("train.tsv", "dev.tsv", "vocab/vocab.txt", "vocab/tokenizer_config.json"):
        _put(f"{ram}/in/{rel}", open(os.path.join(FILES, rel), "rb").read())
    workdir, local = f"{ram}/work", str(base / "checkpoints_of_work")
    c = finetune_config("custom")
    c.tokenizer = f"{ram}/in/vocab"
    c.model.update(preset="custom", num_layers=1, hidden_size=32, num_heads=2,
                   intermediate_size=64, vocab_size=40, max_position_embeddings=64)
    c.data.train, c.data.dev, c.data.test = (f"{ram}/in/train.tsv", f"{ram}/in/dev.tsv",
                                             f"{ram}/in/dev.tsv")
    c.data.text_a, c.data.labels = "sentence", "neg,pos"
    c.max_seq_length, c.global_batch_size, c.eval_batch_size = 16, 16, 8
    c.total_steps, c.eval_every, c.checkpoint_every, c.optim.lr = 4, 2, 2, 2e-3
    c.log_every = 1
    real = ckpt_lib.Checkpointer
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        patch.setattr(ckpt_lib, "Checkpointer", lambda directory, *a, **k: real(
            os.fspath(directory).replace(workdir, local, 1), *a, **k))
        summary = classify.run(c, workdir)
        assert os.listdir(base) == ["checkpoints_of_work"], "a ram:// path used as a local one"
    yield workdir, local, summary
    epath.Path(ram).rmtree(missing_ok=True)


def test_finetuning_reads_and_writes_its_workdir_on_gs(finetuned):
    workdir, local, summary = finetuned
    files = _tree(workdir)
    for name in ("metrics.json", "metrics.jsonl", "best.json", "curves.png",
                 "predictions/dev.tsv", "predictions/test.tsv"):
        assert name in files, (name, sorted(files))
    assert any(n.startswith("tb/train/events.out.tfevents") for n in files)  # tf.summary
    assert "checkpoints_latest" not in {n.split("/")[0] for n in files}  # removed at the end
    assert not [n for n in files if ".tmp" in n]
    assert json.loads(files["metrics.json"]) == json.loads(json.dumps(summary))
    assert json.loads(files["best.json"])["step"] == summary["best_step"]
    steps = [json.loads(line)["step"] for line in files["metrics.jsonl"].decode().splitlines()
             if '"train"' in line]
    assert steps == [1, 2, 3]  # appended line by line on gs:// (step 4 is read after the loop)
    # the accuracy the run reports is the one its written predictions have on the gs:// dev set
    rows = open(os.path.join(FILES, "dev.tsv")).read().splitlines()[1:]
    gold = [r.split("\t")[1] for r in rows]
    pred = [r.split("\t")[1] for r in files["predictions/dev.tsv"].decode().splitlines()[1:]]
    assert len(pred) == len(gold) == summary["dev"]["examples"]
    assert np.mean([p == g for p, g in zip(pred, gold)]) == pytest.approx(
        summary["dev"]["accuracy"])
    assert files["predictions/test.tsv"] == files["predictions/dev.tsv"]  # the same file
    assert os.path.isdir(os.path.join(local, "checkpoints"))  # orbax's part, kept local


def test_embed_writes_its_output_to_gs(finetuned, ram, tmp_path):
    from bertjax import config as config_lib
    from bertjax.finetuning import embedding

    _, local, _ = finetuned  # a fine-tuned encoder whose recorded tokenizer is on gs://
    sentences = ["cat small near house", "sees new tree road runs", "good car"]
    inp = _put(f"{ram}/emb/sentences.txt", ("\n".join(sentences) + "\n").encode())
    pairs = _put(f"{ram}/emb/pairs.tsv", b"cat small\tcat small\t5\ngood car\tnew tree\t1\n")
    settings = embedding.Settings(local, max_seq_length=16, batch_size=8)
    out_r, out_l = f"{ram}/emb/out.npy", str(tmp_path / "out.npy")
    for out in (out_r, out_l):
        assert embedding.run(settings, input_path=inp, output=out) == {"count": 3, "dim": 32}
    emb = np.load(io.BytesIO(epath.Path(out_r).read_bytes()))
    np.testing.assert_array_equal(emb, np.load(out_l))
    assert emb.shape == (3, 32) and np.isfinite(emb).all()
    with pytest.raises(config_lib.ConfigError, match=f"--output={out_r} already exists"):
        embedding.run(settings, input_path=inp, output=out_r)
    result = embedding.run(settings, pairs_path=pairs, output=f"{ram}/emb/sims.tsv")
    lines = epath.Path(f"{ram}/emb/sims.tsv").read_text().splitlines()
    assert lines[0] == "index\tcosine\tgold" and len(lines) == 3
    assert float(lines[1].split("\t")[1]) == pytest.approx(1.0, abs=1e-5)  # a sentence, twice
    np.testing.assert_allclose([float(x.split("\t")[1]) for x in lines[1:]],
                               result["similarities"], atol=1e-8)
    assert not [p.name for p in epath.Path(f"{ram}/emb").iterdir() if ".tmp" in p.name]


# ------------------------------------------------------------------------- the static check


# The modules whose file paths come from users (data, prepare, fine-tuning, embedding).
SCANNED = ["bertjax/data/" + n for n in ("prepare.py", "records.py", "tokenizer.py",
                                         "wordpiece.py", "sources.py", "tasks.py", "text.py",
                                         "corpus.py")] + [
    "bertjax/inputs.py", "bertjax/prepare.py", "bertjax/embed.py", "bertjax/finetune.py",
    "bertjax/glue.py"] + sorted("bertjax/finetuning/" + n for n in os.listdir(
        os.path.join(ROOT, "bertjax", "finetuning")) if n.endswith(".py"))
# Calls that treat a path as local: builtin open, the os module's file calls and tests, glob,
# shutil, pathlib. Pure string work (os.path.join, basename, dirname, splitext) is fine.
LOCAL_ONLY = ({"open", "io.open"}
              | {f"os.{n}" for n in ("makedirs", "mkdir", "remove", "unlink", "rename", "replace",
                                     "rmdir", "removedirs", "listdir", "scandir", "walk", "stat",
                                     "lstat", "access", "open", "chmod", "utime", "truncate")}
              | {f"os.path.{n}" for n in ("exists", "lexists", "isfile", "isdir", "islink",
                                          "ismount", "getsize", "getmtime", "getctime",
                                          "getatime", "abspath", "realpath", "samefile")})
LOCAL_MODULES = ("glob", "shutil", "pathlib")
# (module, function) where a local call is right, and why.
ALLOWED = {
    # the embedded corpus is read from the running Python's own standard library: always local
    ("bertjax/data/corpus.py", "_stdlib_files"): {"os.walk"},
    ("bertjax/data/corpus.py", "stdlib_documents"): {"open"},
}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _local_calls(source: str) -> list[tuple[str, str, int]]:
    """(enclosing function, call, line) of every local-only call or import in ``source``."""
    found = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef,
                                                     ast.AsyncFunctionDef)) else where
            if isinstance(child, ast.Call):
                name = _dotted(child.func) or ""
                if name in LOCAL_ONLY or name.split(".")[0] in LOCAL_MODULES:
                    found.append((where, name, child.lineno))
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                module = getattr(child, "module", None) or ""
                for a in child.names:
                    full = f"{module}.{a.name}" if module else a.name
                    if full.split(".")[0] in LOCAL_MODULES or full in LOCAL_ONLY:
                        found.append((where, f"import {full}", child.lineno))
            visit(child, inner)

    visit(ast.parse(source), "<module>")
    return found


def test_user_paths_go_through_the_path_layer():
    wrong, allowed = [], set()
    for rel in SCANNED:
        with open(os.path.join(ROOT, rel)) as f:
            for where, call, line in _local_calls(f.read()):
                if call in ALLOWED.get((rel, where), ()):
                    allowed.add((rel, where, call))
                else:
                    wrong.append(f"{rel}:{line} {where}: {call}")
    assert not wrong, ("local-only file calls (use bertjax.data.fs / etils.epath, or allow one "
                       f"with its reason): {wrong}")
    stale = {(rel, where, c) for (rel, where), calls in ALLOWED.items() for c in calls} - allowed
    assert not stale, f"allowed calls that are no longer made (drop them): {sorted(stale)}"


def test_the_static_check_finds_what_it_looks_for():
    source = ("import shutil\nfrom os.path import exists\n"
              "def f(p):\n    open(p)\n    os.path.isdir(p)\n    glob.glob(p)\n"
              "    os.path.join(p, 'x')\n    fs.path(p).open()\n")
    assert [c for _, c, _ in _local_calls(source)] == [
        "import shutil", "import os.path.exists", "open", "os.path.isdir", "glob.glob"]
