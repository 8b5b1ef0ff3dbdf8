"""Token classification (bertjax.finetuning.tagging): featurisation, padded sharded evaluation, one
end-to-end run through the command, eval_only, and a bad tag stopping the command.

Files in tests/finetuning/files/ner (written by its generate.py): CoNLL train/dev sets where a place
after "in" is LOC and a name after "mr" is PER, a WordPiece vocab that splits most names into
several pieces, and a train file with one malformed tag. A tiny "imported" workdir made from that
vocab starts the run, so it goes through init_from, the tokenizer look-up and the encoder restore.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax import model as model_lib
from bertjax import optim
from bertjax import rundir
from bertjax import sharding
from bertjax import train
from bertjax.data import tasks as readers
from bertjax.finetuning import features
from bertjax.finetuning import packing
from bertjax.finetuning import runner
from bertjax.finetuning import tagging
from configs import ner as ner_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files", "ner")
VOCAB_DIR = os.path.join(FILES, "vocab")
LABELS = ("O", "B-LOC", "B-PER", "I-LOC", "I-PER")  # sorted, "O" first


def tiny_cfg(vocab_size: int) -> model_lib.BertConfig:
    return model_lib.BertConfig(vocab_size=vocab_size, hidden_size=32, num_layers=1,
                                num_heads=2, intermediate_size=64, max_position_embeddings=64)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> str:
    return make_import(str(tmp_path_factory.mktemp("imported")))


def make_import(workdir: str) -> str:
    """A bertjax workdir shaped like a `bertjax.convert` import: checkpoint + vocab.txt."""
    import shutil

    import flax
    import flax.traverse_util

    from bertjax.interop import checkpoints as convert_io

    cfg = tiny_cfg(features.WordPieceAdapter(VOCAB_DIR).vocab_size)
    ids = jnp.zeros((1, 8), jnp.int32)
    shapes = flax.linen.meta.unbox(jax.eval_shape(  # shapes only: nothing to compile
        lambda: model_lib.BertForPreTraining(cfg).init(
            jax.random.PRNGKey(3), ids, ids, ids, jnp.zeros((1, 2), jnp.int32))["params"]))
    rng = np.random.default_rng(3)
    flat = {k: (np.ones if k[-1] == "scale" else lambda s: 0.02 * rng.standard_normal(s))(
        v.shape).astype(v.dtype) for k, v in flax.traverse_util.flatten_dict(shapes).items()}
    convert_io.save_workdir_state(workdir, flax.traverse_util.unflatten_dict(flat), cfg)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(VOCAB_DIR, name), workdir)
    return workdir


def test_encode_labels_first_pieces_and_splits_long_sentences_into_windows():
    tok = features.WordPieceAdapter(VOCAB_DIR)
    sentences = readers.read_conll(os.path.join(FILES, "dev.conll"))
    ids = {t: i for i, t in enumerate(LABELS)}
    arrays, meta = tagging.encode(sentences, tok, 16, ids)
    assert meta["split"] > 0 and arrays["input_ids"].shape[0] > len(sentences)
    for r, si in enumerate(meta["sentence"]):
        words = meta["word_ids"][r]
        first = (words >= 0) & (np.r_[-1, words[:-1]] != words)  # a word's first piece
        np.testing.assert_array_equal(arrays["labels"][r] >= 0, first)
        tags = sentences[si]["tags"]
        assert [LABELS[x] for x in arrays["labels"][r][first]] == [tags[w] for w in words[first]]
        assert arrays["input_mask"][r].sum() <= 16
    # every word of every sentence is the first piece of exactly one row's token
    seen = {}
    for r, si in enumerate(meta["sentence"]):
        for w in meta["word_ids"][r][arrays["labels"][r] >= 0]:
            seen[(si, int(w))] = seen.get((si, int(w)), 0) + 1
    assert seen == {(si, w): 1 for si, s in enumerate(sentences) for w in range(len(s["words"]))}
    assert any(len(p) > 1 for p in tok.encode_batch(["berlin", "smith"]))  # pieces exist
    # the scorer reads the predictions back per word: gold logits give f1 1
    family = tagging.TaggingFamily()
    family.labels = LABELS
    logits = np.eye(len(LABELS))[np.maximum(arrays["labels"], 0)]
    split = runner.Split(arrays, meta={**meta, "sentences": sentences})
    assert family.score(logits, split)["f1"] == 1.0


def _eval_once(devices, split, family, slots=1):
    """Outputs, loss statistics and scores of a fresh tiny tagger on ``split``; with slots > 1
    the split is packed (bertjax/finetuning/packing.py) and the outputs unpacked to its rows."""
    cfg = tiny_cfg(40)
    mesh = sharding.make_mesh(len(devices), 1, 1, devices=devices)
    rules = tuple(sharding.DEFAULT_RULES)
    model = family.make_model(cfg)
    c = ner_config.get_config()
    c.total_steps = 10
    tx, schedule = optim.make_optimizer(c)
    state, sh = train.create_train_state(model, tx, mesh, rules, 0, train.task_inputs(16))
    fns = train.StepFns(model=model, tx=tx, schedule=schedule, mesh=mesh, rules=rules,
                        state_shardings=sh)
    data = split.arrays
    if slots > 1:
        rows, _ = packing.best_fit(packing.lengths(data), range(split.rows), slots,
                                   data["input_ids"].shape[1])
        data, index = packing.pack(data, rows, slots, None, family.token_keys)
        like = packing.layout(8, slots, split.arrays, family.token_keys)
    else:
        like = {k: np.zeros((8,) + v.shape[1:], v.dtype) for k, v in data.items()}
        like["example_mask"] = np.zeros(8, np.float32)
    _, eval_fn = runner.jit_steps(fns, like, family.loss_stats)
    out, stats = runner.predict(eval_fn, state.params, data, 8, train.batch_shardings(fns, like))
    if slots > 1:
        assert len(data["input_ids"]) < split.rows
        out = packing.unpack_tokens(out, data, index, split.rows)
    return out, stats, family.score(out, split)


def _dev_split():
    """The tagging family with the test labels, and the dev file read in rows of 16."""
    family = tagging.TaggingFamily()
    c = ner_config.get_config()
    c.data.dev, c.max_seq_length = os.path.join(FILES, "dev.conll"), 16
    family.prepare(c)
    family.labels = LABELS
    return family, family.read(c, features.WordPieceAdapter(VOCAB_DIR), c.data.dev, True)


def test_padded_eval_equal_on_1_and_8_devices():
    family, split = _dev_split()
    assert split.rows % 8 and split.num_examples == 37  # the last batch is partly padding
    out1, stats1, score1 = _eval_once(jax.devices()[:1], split, family)
    out8, stats8, score8 = _eval_once(jax.devices(), split, family)
    assert out1.shape == out8.shape == (split.rows, 16, len(LABELS))
    np.testing.assert_allclose(out1, out8, atol=1e-5)
    words = sum(len(s["words"]) for s in split.meta["sentences"])
    assert stats1["count"] == stats8["count"] == words  # each word once, padding rows not at all
    np.testing.assert_allclose(stats1["loss_sum"], stats8["loss_sum"], rtol=1e-5)
    assert score1 == score8
    # packed rows (up to 3 sentences a row): the same logits at every real token, each word
    # counted once, the same scores
    outp, statsp, scorep = _eval_once(jax.devices(), split, family, slots=3)
    real = split.arrays["input_mask"] > 0
    np.testing.assert_allclose(outp[real], out1[real], atol=1e-5)
    assert statsp["count"] == words
    np.testing.assert_allclose(statsp["loss_sum"], stats1["loss_sum"], rtol=1e-5)
    assert scorep == score1


def _command(workdir, *flags):
    return [sys.executable, "-m", "bertjax.finetune", "--config=configs/ner.py",
            f"--workdir={workdir}", "--config.max_seq_length=16",
            "--config.global_batch_size=16", "--config.eval_batch_size=8",
            "--config.total_steps=40", "--config.eval_every=20", "--config.optim.lr=2e-3",
            "--config.model.hidden_dropout=0", "--config.model.attention_dropout=0",
            "--config.tensorboard=False", *flags]


def _run(cmd):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_command_learns_writes_conll_and_eval_only_agrees(imported, tmp_path):
    # trained and scored with up to 3 sentences a row (bertjax/finetuning/packing.py), scored again
    # one per row by eval_only
    workdir = tmp_path / "ner"
    p = _run(_command(workdir, f"--config.init_from={imported}", "--config.data.examples_per_row=3",
                      f"--config.data.train={os.path.join(FILES, 'train.conll')}",
                      f"--config.data.dev={os.path.join(FILES, 'dev.conll')}"))
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = json.loads((workdir / "metrics.json").read_text())
    dev = metrics["dev"]
    assert metrics["family"] == "ner" and dev["examples"] == 37
    assert dev["f1"] > 0.6, dev  # predicting all O scores f1 0
    assert set(dev["per_type"]) == {"LOC", "PER"}
    lines = (workdir / "predictions" / "dev.conll").read_text().split("\n\n")
    sentences = readers.read_conll(os.path.join(FILES, "dev.conll"))
    assert len([b for b in lines if b.strip()]) == 37
    first = lines[0].splitlines()
    assert [l.split()[:2] for l in first] == [list(x) for x in zip(sentences[0]["words"],
                                                                   sentences[0]["tags"])]
    assert all(l.split()[2] in LABELS for l in first)
    # eval_only: labels, model and files from the workdir's saved config
    c = ner_config.get_config()
    again = runner.run(c, str(workdir), tagging.TaggingFamily(), eval_only=True)
    for key in ("f1", "precision", "recall", "accuracy"):
        assert again["dev"][key] == pytest.approx(dev[key], abs=1e-6), key
    assert again["dev"]["loss"] == pytest.approx(dev["loss"], rel=1e-4)
    assert "packing: up to 3 examples a row" in p.stdout
    assert rundir.saved_config(str(workdir))["data"]["labels"] == ",".join(LABELS)
    assert c.data.labels == ""  # settled in the run's own copy, not the caller's config


def test_bad_tag_is_one_line_exit_2_nothing_written(imported, tmp_path):
    workdir = tmp_path / "bad"
    p = _run(_command(workdir, f"--config.init_from={imported}",
                      f"--config.data.train={os.path.join(FILES, 'bad_tag.conll')}",
                      f"--config.data.dev={os.path.join(FILES, 'dev.conll')}"))
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert lines[-1].startswith("error: ") and not any("Traceback" in l for l in lines)
    assert "bad_tag.conll:11" in lines[-1] and "'LOC-B'" in lines[-1], lines[-1]
    assert not workdir.exists()


def test_strict_scores_drop_entities_that_start_with_i():
    """Gold tags predicted with every B- written as I-: conlleval rules still read the same
    entities (f1 1), seqeval's strict mode reads none (strict_f1 0)."""
    family, split = _dev_split()
    ids = {t: i for i, t in enumerate(LABELS)}
    as_i = np.array([ids["I-" + t[2:]] if t.startswith("B-") else ids[t] for t in LABELS])
    labels = split.arrays["labels"]
    outputs = np.zeros(labels.shape + (len(LABELS),), np.float32)
    rows, cols = np.nonzero(labels >= 0)
    outputs[rows, cols, as_i[labels[rows, cols]]] = 1.0
    scores = family.score(outputs, split)
    assert scores["f1"] == 1.0 and scores["accuracy"] < 1.0
    assert scores["strict_f1"] == 0.0 and scores["strict_recall"] == 0.0
    exact = np.zeros_like(outputs)
    exact[rows, cols, labels[rows, cols]] = 1.0
    assert family.score(exact, split)["strict_f1"] == 1.0
