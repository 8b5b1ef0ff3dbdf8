"""Fine-tuning (bertjax.finetuning.classify): padded evaluation, end-to-end runs, error lines.

Small files in tests/finetuning/files/finetune: a 64-example train TSV whose label says whether the
sentence holds the word "good", its 30-example dev set, an STS-B-layout pair file whose score
counts "good", and a WordPiece vocab of the words they use. A tiny "imported" workdir is built
from that vocab so the runs go through init_from, the tokenizer look-up and the encoder restore.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bertjax import model as model_lib
from bertjax import sharding
from bertjax import train
from bertjax.finetuning import classify
from bertjax.finetuning import features
from bertjax.finetuning.defaults import finetune_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files", "finetune")
VOCAB_DIR = os.path.join(FILES, "vocab")


def tiny_cfg(vocab_size: int) -> model_lib.BertConfig:
    return model_lib.BertConfig(vocab_size=vocab_size, hidden_size=32, num_layers=1,
                                num_heads=2, intermediate_size=64, max_position_embeddings=64)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> str:
    """A bertjax workdir shaped like a `bertjax.convert` import: checkpoint + vocab.txt."""
    import shutil

    from bertjax.interop import checkpoints as convert_io

    workdir = str(tmp_path_factory.mktemp("imported"))
    vocab = features.WordPieceAdapter(VOCAB_DIR).vocab_size
    cfg = tiny_cfg(vocab)
    ids = jnp.zeros((1, 8), jnp.int32)
    params = model_lib.BertForPreTraining(cfg).init(
        jax.random.PRNGKey(3), ids, ids, ids, jnp.zeros((1, 2), jnp.int32))["params"]
    params = jax.tree.map(np.asarray, __import__("flax").linen.meta.unbox(params))
    convert_io.save_workdir_state(workdir, params, cfg)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(VOCAB_DIR, name), workdir)
    return workdir


def custom_config(init_from: str, **data) -> ml_collections.ConfigDict:
    c = finetune_config("custom")
    c.init_from = init_from
    c.data.train = os.path.join(FILES, "train.tsv")
    c.data.dev = os.path.join(FILES, "dev.tsv")
    c.data.text_a, c.data.labels = "sentence", "neg,pos"
    c.data.update(data)
    c.max_seq_length, c.global_batch_size, c.eval_batch_size = 16, 16, 8
    c.total_steps, c.eval_every, c.optim.lr = 60, 20, 2e-3
    c.model.hidden_dropout = c.model.attention_dropout = 0.0
    return c


def _eval_once(devices, data, regression=False):
    cfg = tiny_cfg(40)
    mesh = sharding.make_mesh(len(devices), 1, 1, devices=devices)
    rules = tuple(sharding.DEFAULT_RULES)
    model = classify.SequenceClassifier(cfg, 1 if regression else 3)
    c = finetune_config("custom")
    c.total_steps = 10
    from bertjax import optim
    tx, schedule = optim.make_optimizer(c)
    state, sh = train.create_train_state(model, tx, mesh, rules, 0, train.task_inputs(12))
    fns = train.StepFns(model=model, tx=tx, schedule=schedule, mesh=mesh, rules=rules,
                        state_shardings=sh)
    like = {k: np.zeros((8,) + v.shape[1:], v.dtype) for k, v in data.items()}
    like["example_mask"] = np.zeros(8, np.float32)
    _, eval_fn = classify.jit_steps(fns, like, regression)
    return classify.predict(eval_fn, state.params, data, 8, train.batch_shardings(fns, like))


@pytest.mark.slow
def test_padded_eval_equal_on_1_and_8_devices_and_counts_each_example_once():
    n = 21  # not a multiple of the eval batch (8): the last batch is 5 real + 3 padding rows
    rng = np.random.default_rng(0)
    data = {"input_ids": rng.integers(5, 40, (n, 12)).astype(np.int32),
            "input_mask": np.ones((n, 12), np.int32), "segment_ids": np.zeros((n, 12), np.int32),
            "label": rng.integers(0, 3, n).astype(np.int32)}
    data["input_mask"][:, 9:] = 0
    out1, stats1 = _eval_once(jax.devices()[:1], data)
    out8, stats8 = _eval_once(jax.devices(), data)
    assert out1.shape == out8.shape == (n, 3)
    np.testing.assert_allclose(out1, out8, atol=1e-5)
    assert stats1["count"] == stats8["count"] == n
    np.testing.assert_allclose(stats1["loss_sum"], stats8["loss_sum"], rtol=1e-5)
    task = classify.Task("custom", ("a", "b", "c"), ("accuracy",), glue=False)
    assert classify.score(task, out1, data["label"]) == classify.score(task, out8, data["label"])
    # Each example once: the masks of the padded batches select rows 0..n-1 exactly.
    seen = np.concatenate([b["input_ids"][b["example_mask"] > 0]
                           for b in classify.eval_batches(data, 8)])
    np.testing.assert_array_equal(seen, data["input_ids"])
    # Outputs are per example, in order: the padded copies of row 0 are cut, not kept.
    np.testing.assert_allclose(out1[:1], _eval_once(jax.devices()[:1],
                                                    {k: v[:1] for k, v in data.items()})[0],
                               atol=1e-5)


def test_features_pair_truncates_longer_segment():
    tok = features.WordPieceAdapter(VOCAB_DIR)
    ex = [{"text_a": "the cat", "text_b": "a big red dog runs far near the old house",
           "label": 1}]
    f = features.encode(ex, tok, 10)
    ids = f["input_ids"][0].tolist()
    assert ids[0] == tok.cls_id and ids.count(tok.sep_id) == 2 and f["input_mask"][0].all()
    # 7 text tokens fit: "the cat" whole, the second segment cut to 5
    assert f["segment_ids"][0].tolist() == [0, 0, 0, 0] + [1] * 6


@pytest.mark.slow
def test_finetune_learns_writes_predictions_and_eval_only_agrees(imported, tmp_path):
    # Trained with up to 4 examples a row (bertjax/finetuning/packing.py; unpacked training runs in
    # the other tests), scored packed; then scored again one example per row and packed.
    workdir = str(tmp_path / "ft")
    result = classify.run(custom_config(imported, examples_per_row=4), workdir)
    assert result["dev"]["examples"] == 30
    assert result["dev"]["accuracy"] >= 0.8, result  # chance is 0.5
    rows = open(os.path.join(workdir, "predictions", "dev.tsv")).read().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 31
    assert {r.split("\t")[1] for r in rows[1:]} <= {"neg", "pos"}
    assert os.path.exists(os.path.join(workdir, "metrics.json"))
    assert os.path.getsize(os.path.join(workdir, "curves.png")) > 10_000  # loss, dev accuracy
    for m in (1, 4):
        again = classify.run(custom_config("", examples_per_row=m), workdir, eval_only=True)
        assert again["dev"] == pytest.approx(result["dev"], rel=1e-4, abs=1e-5)
    with pytest.raises(classify.config_lib.ConfigError, match="already holds"):
        classify.run(custom_config(imported), workdir)


@pytest.mark.slow
def test_regression_stsb_reports_correlations(imported, tmp_path):
    c = finetune_config("stsb")
    c.init_from = imported
    c.data.train = os.path.join(FILES, "sts_train.tsv")
    c.data.dev = os.path.join(FILES, "sts_dev.tsv")
    c.max_seq_length, c.global_batch_size, c.eval_batch_size = 32, 16, 8
    c.total_steps, c.optim.lr = 20, 2e-3
    result = classify.run(c, str(tmp_path / "sts"))
    assert set(result["dev"]) >= {"pearson", "spearman", "loss"}
    assert result["dev"]["examples"] == 24
    assert np.isfinite(result["dev"]["pearson"]) and np.isfinite(result["dev"]["spearman"])
    score = open(os.path.join(tmp_path, "sts", "predictions", "dev.tsv")).read().splitlines()[1]
    float(score.split("\t")[1])  # a number, not a label


def test_unknown_label_is_one_line_exit_2(imported, tmp_path):
    cmd = [sys.executable, "-m", "bertjax.finetune", "--config=configs/glue.py:task=custom",
           f"--config.init_from={imported}",
           f"--config.data.train={os.path.join(FILES, 'bad_label.tsv')}",
           f"--config.data.dev={os.path.join(FILES, 'dev.tsv')}",
           "--config.data.text_a=sentence", "--config.data.labels=neg,pos",
           "--config.max_seq_length=32",
           f"--workdir={tmp_path / 'bad'}"]
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert lines[-1].startswith("error: ")
    assert "'maybe'" in lines[-1] and "bad_label.tsv:3" in lines[-1]
    assert not any("Traceback" in l for l in lines)
    assert not os.path.exists(tmp_path / "bad" / "checkpoints")
