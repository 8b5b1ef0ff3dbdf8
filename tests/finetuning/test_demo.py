"""The README demo task (bertjax.finetuning.demo): word order, derived from the embedded corpus.

The derivation is checked on the real corpus (read once, ~5 s): the files are deterministic,
balanced, every ``swapped`` row is its ``original`` with two words exchanged (same multiset of
words, different text), dev sentences come only from the documents pre-training holds out and
never occur in train. A subprocess runs the demo command (runlocal, a tiny imported encoder) and
checks that both dev scores and their difference are printed, that running it again reports the
same scores without training, and that other settings on the same workdir are refused.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from bertjax.data import corpus
from bertjax.data import prepare as prepare_lib
from bertjax.data import text
from bertjax.finetuning import demo
from envs import xla_flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files", "finetune",
                         "vocab")


@pytest.fixture(scope="module")
def documents() -> list[list[str]]:
    return list(corpus.stdlib_documents())


def _rows(path: str) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        assert f.readline() == "sentence\tlabel\n"
        return [tuple(line.rstrip("\n").split("\t")) for line in f]


@pytest.fixture(scope="module")
def written(documents, tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    train, dev, info = demo.write_demo_data(str(d / "a"), 400, 0, seed=0, documents=documents)
    again = demo.write_demo_data(str(d / "b"), 400, 0, seed=0, documents=documents)
    other = demo.write_demo_data(str(d / "c"), 400, 0, seed=1, documents=documents)
    return {"train": _rows(train), "dev": _rows(dev), "info": info,
            "again": (_rows(again[0]), _rows(again[1])),
            "other": (_rows(other[0]), _rows(other[1]))}


def test_deterministic_for_a_seed_and_different_across_seeds(written):
    assert written["again"] == (written["train"], written["dev"])
    assert written["other"][0] != written["train"]
    assert written["other"][1] != written["dev"]


def test_sizes_and_labels_balanced(written):
    info = written["info"]
    assert info["train"] == len(written["train"]) == 400
    assert info["dev"] == len(written["dev"]) == 2 * info["dev_available"] > 200
    for split in ("train", "dev"):
        counts = collections.Counter(label for _, label in written[split])
        assert counts == {"original": len(written[split]) // 2,
                          "swapped": len(written[split]) // 2}, split


def test_swapped_is_its_original_with_two_words_exchanged(written):
    for split in ("train", "dev"):
        originals = {tuple(sorted(s.split())): s for s, label in written[split]
                     if label == "original"}
        for s, label in written[split]:
            if label != "swapped":
                continue
            orig = originals[tuple(sorted(s.split()))]  # same multiset of words ...
            assert s != orig  # ... in another order
            a, b = orig.split(), s.split()
            diff = [i for i in range(len(a)) if a[i] != b[i]]
            assert len(diff) == 2 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
            assert 0 < diff[0] and diff[1] < len(a) - 1  # first and last words stay put
            assert all(re.fullmatch("[a-z]+", a[i]) for i in diff)


def test_dev_from_held_out_documents_and_never_in_train(documents, written):
    held_docs = [d for d in documents if prepare_lib.is_eval(
        prepare_lib.document_hash("\n".join(d)), demo.EVAL_FRACTION)]
    assert 0 < len(held_docs) < len(documents) // 10
    held = {" ".join(s.split()) for d in held_docs for s in text.document_sentences(d)}
    seen = {" ".join(s.split()) for d in documents if d not in held_docs
            for s in text.document_sentences(d)}
    dev_orig = {s for s, label in written["dev"] if label == "original"}
    train_orig = {s for s, label in written["train"] if label == "original"}
    assert dev_orig <= held and not dev_orig & seen
    assert train_orig <= seen
    assert not {s for s, _ in written["dev"]} & {s for s, _ in written["train"]}
    for s in dev_orig | train_orig:
        assert demo.MIN_WORDS <= len(s.split()) <= demo.MAX_WORDS


def test_split_follows_the_pretraining_document_hash():
    docs = [[f"Paragraph number {i} of this document is here.",
             f"The shared line says the same thing in every file {i % 2}."]
            for i in range(40)]
    docs.append(["This sentence is in a held out document and a training one alike.",
                 "Another line."])
    docs.append(["This sentence is in a held out document and a training one alike.",
                 "A third line."])
    train, held = demo.split_sentences(docs, eval_fraction=0.5)
    is_held = [prepare_lib.is_eval(prepare_lib.document_hash("\n".join(d)), 0.5) for d in docs]
    assert 0 < sum(is_held[:40]) < 40
    for i in range(40):
        s = f"Paragraph number {i} of this document is here."
        assert (s in held, s in train) == (is_held[i], not is_held[i])
    assert not set(train) & set(held)
    assert len(train) == len(set(train)) and len(held) == len(set(held))


def test_swap_words_refuses_a_sentence_without_two_movable_words():
    rng = np.random.default_rng(0)
    for sentence in ("Return the the Value.", "Return a value.", "Return A Value, now."):
        with pytest.raises(ValueError, match="no two different movable words"):
            demo.swap_words(sentence, rng)
    assert demo.swap_words("Return the value now.", rng) == "Return value the now."


@pytest.mark.slow
def test_demo_command_prints_both_scores_and_the_difference(tmp_path):
    import shutil

    import jax
    import jax.numpy as jnp

    from bertjax.interop import checkpoints as convert_io
    from bertjax import model as model_lib
    from bertjax.finetuning import features

    init = tmp_path / "encoder"
    cfg = model_lib.BertConfig(vocab_size=features.WordPieceAdapter(VOCAB_DIR).vocab_size,
                               hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                               max_position_embeddings=64)
    ids = jnp.zeros((1, 8), jnp.int32)
    params = model_lib.BertForPreTraining(cfg).init(
        jax.random.PRNGKey(0), ids, ids, ids, jnp.zeros((1, 2), jnp.int32))["params"]
    convert_io.save_workdir_state(str(init), jax.tree.map(
        np.asarray, __import__("flax").linen.meta.unbox(params)), cfg)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(VOCAB_DIR, name), init)
    cmd = [sys.executable, "-m", "bertjax.finetune", "--config=configs/demo.py:runlocal",
           f"--config.init_from={init}", f"--workdir={tmp_path / 'demo'}",
           "--config.total_steps=4", "--config.eval_every=4", "--config.max_seq_length=32",
           "--config.global_batch_size=8", "--config.eval_batch_size=64"]
    # One CPU device: the sharded paths are tested elsewhere; here only the command's output.
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS=xla_flags(1))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    pre = re.search(r"^dev accuracy pre-trained +([0-9.]+)", p.stdout, re.M)
    scratch = re.search(r"^dev accuracy from scratch +([0-9.]+)", p.stdout, re.M)
    diff = re.search(r"^difference +([-+][0-9.]+)", p.stdout, re.M)
    assert pre and scratch and diff, p.stdout[-3000:]
    assert float(diff.group(1)) == pytest.approx(
        float(pre.group(1)) - float(scratch.group(1)), abs=2e-4)
    assert os.path.isfile(tmp_path / "demo" / "scratch" / "metrics.json")

    # Rerun (the README's first command may be run twice): the same scores, nothing retrained.
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already fine-tuned in") == 2, again.stdout[-3000:]
    assert "step 4/4" not in again.stdout
    for line in (pre, scratch, diff):
        assert line.group(0) in again.stdout
    # Other settings on the same workdir: refused in one line, the earlier results untouched.
    changed = subprocess.run(cmd + ["--config.optim.lr=1e-3"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert changed.returncode == 2, changed.stdout[-2000:] + changed.stderr[-2000:]
    assert "already holds a fine-tuned model" in changed.stderr
    with open(tmp_path / "demo" / "metrics.json") as f:
        assert f"{json.load(f)['dev']['accuracy']:.4f}" == pre.group(1)
    # A seed that would write other demo data: refused before the earlier data is touched.
    data = (tmp_path / "demo" / "data" / "train.tsv").read_text()
    other_seed = subprocess.run(cmd + ["--config.seed=1"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
    assert other_seed.returncode == 2, other_seed.stderr[-2000:]
    assert "holds the demo data of other settings" in other_seed.stderr
    assert (tmp_path / "demo" / "data" / "train.tsv").read_text() == data
    # A missing encoder: one line, and no demo data written into a new workdir.
    missing = subprocess.run(cmd[:4] + [f"--workdir={tmp_path / 'none'}",
                                        f"--config.init_from={tmp_path / 'absent'}"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert not os.path.exists(tmp_path / "none")
