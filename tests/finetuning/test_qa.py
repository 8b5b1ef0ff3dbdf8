"""Span QA (bertjax.finetuning.qa): offsets, windows and targets, padded sharded evaluation, the CLI.

Files in tests/finetuning/files/squad/capitals (written by its generate.py): contexts of six
"The capital of <country> is <city>." facts, longer than a 48-token window, so later facts are
only seen by a later window; city names are two word pieces ("Tor" "##wick"); v2.0 adds
questions about countries the context does not mention. A WordPiece vocab of those words, and a
sentencepiece model trained here on the same text, are the two tokenizer kinds.
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
from bertjax import sharding
from bertjax import train
from bertjax.data import tasks as readers
from bertjax.data.errors import DataError
from bertjax.finetuning import features
from bertjax.finetuning import qa
from bertjax.finetuning import qa_features
from bertjax.finetuning import runner
from envs import xla_flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files", "squad", "capitals")
VOCAB_DIR = os.path.join(FILES, "vocab")
SEQ, STRIDE, QUERY = 48, 16, 16


def squad_config(version: str = "1.1", **data):
    """configs/squad.py with the test files and small windows."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("squad_config",
                                                  os.path.join(ROOT, "configs", "squad.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(f"version={version}")
    c.data.train = os.path.join(FILES, f"train-v{version}.json")
    c.data.dev = os.path.join(FILES, f"dev-v{version}.json")
    c.data.doc_stride, c.data.max_query_length = STRIDE, QUERY
    c.data.update(data)
    c.max_seq_length = SEQ
    return c


@pytest.fixture(scope="module")
def sentencepiece_tok(tmp_path_factory) -> features.SentencePieceAdapter:
    from bertjax.data import tokenizer as sp

    text = [e["context"] + " " + e["question"]
            for e in readers.read_squad(os.path.join(FILES, "train-v2.0.json"))]
    path = str(tmp_path_factory.mktemp("sp") / "tok.model")
    sp.train_tokenizer(text, vocab_size=90, num_threads=1).save(path)
    return features.SentencePieceAdapter(path)


def _answer_texts(feats: qa_features.Featurised):
    """Per labelled window (question, window index, target first/last context token)."""
    for q in feats.questions:
        for w in range(q.count):
            r = q.first + w
            s, e = feats.arrays["start_positions"][r], feats.arrays["end_positions"][r]
            if s:
                base = q.spans[w][0] - q.context_start
                yield q, w, s + base, e + base


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece"])
def test_offsets_and_targets_round_trip(kind, request):
    tok = (features.WordPieceAdapter(VOCAB_DIR) if kind == "wordpiece"
           else request.getfixturevalue("sentencepiece_tok"))
    examples = readers.read_squad(os.path.join(FILES, "dev-v2.0.json"))
    feats = qa_features.featurise(examples, tok, SEQ, QUERY, STRIDE)
    assert feats.unlocated == 0
    multi_piece, later_only, answered = 0, set(), set()
    for q, w, a, b in _answer_texts(feats):
        # The target tokens' offsets give back exactly the answer as written in the context
        # (upper case and the accent kept, though the pieces are lower-cased/accent-stripped).
        assert q.context[q.offsets[a][0]:q.offsets[b][1]] == q.answers[0]["text"]
        multi_piece += b > a
        if w > 0 and q.id not in answered:
            later_only.add(q.id)
        answered.add(q.id)
    assert multi_piece > 0  # answers split across sub-tokens
    assert later_only  # answers that only a window after the first holds whole
    assert answered == {q.id for q in feats.questions if not q.is_impossible}
    for q in feats.questions:
        rows = feats.arrays["input_ids"][q.first:q.first + q.count]
        # Per-word tokenisation gives the ids of the whole text, window by window.
        whole = tok.encode_batch([q.context])[0]
        for (start, length), row in zip(q.spans, rows):
            assert row[q.context_start:q.context_start + length].tolist() == \
                whole[start:start + length]
        if q.is_impossible:
            assert not feats.arrays["start_positions"][q.first:q.first + q.count].any()
    assert len(feats.questions) == len(examples)


def test_align_pieces_unknowns_accents_and_mismatch():
    assert qa_features.align_pieces("Héllo,", ["hel", "lo", ","]) == [(0, 3), (3, 5), (5, 6)]
    # An unknown piece takes the characters between its neighbours (or to the word's end).
    assert qa_features.align_pieces("a☃b", ["a", None, "b"]) == [(0, 1), (1, 2), (2, 3)]
    assert qa_features.align_pieces("x☃☃", ["x", None]) == [(0, 1), (1, 3)]
    assert qa_features.align_pieces("ﬁne", ["fi", "ne"]) == [(0, 1), (1, 3)]  # NFKC ligature
    assert qa_features.align_pieces("(ab", ["", "(", "ab"]) == [(0, 0), (0, 1), (1, 3)]
    assert qa_features.align_pieces("abc", ["ab", "x"]) is None
    assert qa_features.align_pieces("abc", ["ab"]) is None  # a character left over
    assert qa_features.whitespace_words(" a  bc\nd ") == [(1, 2), (4, 6), (7, 8)]

    class Odd:  # a tokenizer whose pieces do not spell the word: the whole word per piece
        def encode_batch(self, texts):
            return [[7, 8] for _ in texts]

        def token_texts(self, ids):
            return ["zz"] * len(ids)

    [(ids, offsets)] = qa_features.tokenize_with_offsets(["ab cd"], Odd())
    assert ids == [7, 8, 7, 8] and offsets.tolist() == [[0, 2], [0, 2], [3, 5], [3, 5]]


def test_bad_questions_are_one_line_errors():
    ex = readers.read_squad(os.path.join(FILES, "dev-v2.0.json"))
    with pytest.raises(DataError, match=r"is_impossible .* use --config=configs/squad.py:"
                                        r"version=2.0"):
        qa.check_examples(ex, "dev.json", version_2=False, labelled=True)
    with pytest.raises(DataError, match="occurs twice"):
        qa.check_examples(ex + ex[:1], "dev.json", version_2=True, labelled=True)
    with pytest.raises(qa.config_lib.ConfigError, match="expected 1.1 or 2.0"):
        squad_config("3.0")
    family = qa.QAFamily()
    with pytest.raises(qa.config_lib.ConfigError, match="version=2.0"):
        family.prepare(squad_config("1.1", train="", dev="", tfds="squad/v2.0"))


def _eval_on(devices, arrays):
    cfg = model_lib.BertConfig(vocab_size=40, hidden_size=32, num_layers=1, num_heads=2,
                               intermediate_size=64, max_position_embeddings=64)
    mesh = sharding.make_mesh(len(devices), 1, 1, devices=devices)
    rules = tuple(sharding.DEFAULT_RULES)
    c = squad_config()
    c.total_steps = 10
    tx, schedule = optim.make_optimizer(c)
    model = qa.SpanQA(cfg)
    state, sh = train.create_train_state(model, tx, mesh, rules, 0, train.task_inputs(SEQ))
    fns = train.StepFns(model=model, tx=tx, schedule=schedule, mesh=mesh, rules=rules,
                        state_shardings=sh)
    like = {k: np.zeros((8,) + v.shape[1:], v.dtype) for k, v in arrays.items()}
    like["example_mask"] = np.zeros(8, np.float32)
    _, eval_fn = runner.jit_steps(fns, like, qa.loss_stats)
    return runner.predict(eval_fn, state.params, arrays, 8, train.batch_shardings(fns, like))


@pytest.mark.slow
def test_padded_eval_same_on_1_and_8_devices_and_masks_non_context():
    tok = features.WordPieceAdapter(VOCAB_DIR)
    c = squad_config("2.0")
    family = qa.QAFamily()
    family.prepare(c)
    dev = family.read(c, tok, c.data.dev, True)
    assert dev.rows % 8 and dev.rows > dev.examples  # windows; a partly padded last batch
    out1, stats1 = _eval_on(jax.devices()[:1], dev.arrays)
    out8, stats8 = _eval_on(jax.devices(), dev.arrays)
    for k in ("start_logits", "end_logits"):
        assert out1[k].shape == (dev.rows, SEQ)
        np.testing.assert_allclose(out1[k], out8[k], atol=1e-5)
    assert stats1["count"] == stats8["count"] == dev.rows
    np.testing.assert_allclose(stats1["loss_sum"], stats8["loss_sum"], rtol=1e-5)
    # Only [CLS] and the context tokens can be chosen: question, [SEP]s, padding are masked.
    ok = np.asarray(qa.allowed(jnp.asarray(dev.arrays["input_mask"]),
                               jnp.asarray(dev.arrays["segment_ids"])))
    context = (dev.arrays["segment_ids"] == 1) & (dev.arrays["input_ids"] != tok.sep_id)
    np.testing.assert_array_equal(ok[:, 1:], context[:, 1:])
    assert ok[:, 0].all()
    assert (out1["start_logits"][~ok] == qa.MASKED).all()
    assert np.isfinite(out1["end_logits"][ok]).all() and (out1["end_logits"][ok] > -1e8).all()
    # The same scores and predictions from either device count.
    s1, s8 = family.score(out1, dev), family.score(out8, dev)
    assert s1 == pytest.approx(s8)
    assert set(s1) >= {"exact", "f1", "HasAns_f1", "NoAns_f1", "best_f1", "best_f1_thresh"}
    p1 = {k: a.text for k, a in family.answers(out1, dev).items()}
    assert p1 == {k: a.text for k, a in family.answers(out8, dev).items()}
    assert set(p1) == {q.id for q in dev.meta}
    # Decoding with the best threshold found scores what best_thresholds promised.
    family.null_threshold = s1["best_f1_thresh"]
    assert family.score(out1, dev)["f1"] == pytest.approx(s1["best_f1"])


def test_tfds_squad_reads_like_the_json_file():
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow as tf

    examples = readers.read_squad(os.path.join(FILES, "dev-v2.0.json"))

    def as_dataset(self, split, **kwargs):
        def gen():
            for e in examples:
                answers = {"text": [a["text"] for a in e["answers"]],
                           "answer_start": [a["answer_start"] for a in e["answers"]]}
                yield {"id": e["id"], "title": e["title"], "context": e["context"],
                       "question": e["question"], "is_impossible": e["is_impossible"],
                       "answers": answers, "plausible_answers": answers}
        seq = {"text": tf.TensorSpec([None], tf.string),
               "answer_start": tf.TensorSpec([None], tf.int32)}
        s = tf.TensorSpec([], tf.string)
        return tf.data.Dataset.from_generator(gen, output_signature={
            "id": s, "title": s, "context": s, "question": s,
            "is_impossible": tf.TensorSpec([], tf.bool), "answers": seq,
            "plausible_answers": seq})

    c = squad_config("2.0", train="", dev="", tfds="squad/v2.0")
    paths = runner.sources(c, eval_only=False)
    assert paths == {"train": "tfds:squad/v2.0:train", "dev": "tfds:squad/v2.0:validation"}
    tok = features.WordPieceAdapter(VOCAB_DIR)
    family = qa.QAFamily()
    family.prepare(c)
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        from_tfds = family.read(c, tok, paths["dev"], True)
    from_file = family.read(c, tok, os.path.join(FILES, "dev-v2.0.json"), True)
    assert from_tfds.arrays.keys() == from_file.arrays.keys()
    for k, v in from_file.arrays.items():
        np.testing.assert_array_equal(from_tfds.arrays[k], v)
    assert [q.id for q in from_tfds.meta] == [q.id for q in from_file.meta]
    assert [q.answers for q in from_tfds.meta] == [q.answers for q in from_file.meta]


# ------------------------------------------------------------------------------ command line


# A tiny encoder from scratch with the test vocab (runs from an import are covered by
# tests/finetuning/test_finetune.py; the shared runner restores "bert" for every family alike).
TINY = ("--config.model.preset=custom", "--config.model.num_layers=1",
        "--config.model.hidden_size=32", "--config.model.num_heads=2",
        "--config.model.intermediate_size=64", "--config.model.vocab_size=40",
        "--config.model.max_position_embeddings=64", f"--config.tokenizer={VOCAB_DIR}",
        "--config.tensorboard=False")
WINDOWS = (f"--config.max_seq_length={SEQ}", f"--config.data.doc_stride={STRIDE}",
           f"--config.data.max_query_length={QUERY}")


def test_encoder_params_restore_by_name():
    cfg = model_lib.BertConfig(vocab_size=40, hidden_size=32, num_layers=1, num_heads=2,
                               intermediate_size=64, max_position_embeddings=64)
    ids = jnp.zeros((1, 8), jnp.int32)
    shapes = lambda m, *a: jax.tree.map(lambda x: x.shape, jax.eval_shape(
        lambda: m.init(jax.random.PRNGKey(0), ids, ids, ids, *a))["params"])
    qa_params = shapes(qa.SpanQA(cfg))
    assert qa_params["bert"] == shapes(model_lib.BertForPreTraining(cfg),
                                       jnp.zeros((1, 2), jnp.int32))["bert"]
    assert set(qa_params) == {"bert", "qa_outputs"}


def run_finetune(*args: str) -> subprocess.CompletedProcess:
    # One CPU device: the sharded (8-device) evaluation is checked in-process above, and a
    # single device compiles and checkpoints the fastest.
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS=xla_flags(1))
    return subprocess.run([sys.executable, "-m", "bertjax.finetune", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def finetune_squad2(workdir: str) -> subprocess.CompletedProcess:
    """A tiny SQuAD v2.0 fine-tuning from scratch on the test files (40 steps)."""
    return run_finetune("--config=configs/squad.py:version=2.0", *TINY, *WINDOWS,
                     f"--config.data.train={os.path.join(FILES, 'train-v2.0.json')}",
                     f"--config.data.dev={os.path.join(FILES, 'dev-v2.0.json')}",
                     "--config.global_batch_size=16", "--config.eval_batch_size=16",
                     "--config.total_steps=40", "--config.eval_every=40",
                     "--config.optim.lr=2e-3", "--config.model.hidden_dropout=0",
                     "--config.model.attention_dropout=0", f"--workdir={workdir}")


@pytest.mark.slow
def test_cli_squad_v2_trains_predicts_every_question_and_eval_only_agrees(tmp_path):
    workdir = str(tmp_path / "squad2")
    p = finetune_squad2(workdir)
    assert p.returncode == 0, p.stderr[-3000:]
    ids = {e["id"] for e in readers.read_squad(os.path.join(FILES, "dev-v2.0.json"))}
    with open(os.path.join(workdir, "predictions", "dev.json")) as f:
        predictions = json.load(f)
    assert set(predictions) == ids and all(isinstance(v, str) for v in predictions.values())
    with open(os.path.join(workdir, "predictions", "dev_null_odds.json")) as f:
        assert set(json.load(f)) == ids
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["family"] == "qa" and metrics["headline"] == "f1"
    dev = metrics["dev"]
    assert {"exact", "f1", "HasAns_f1", "NoAns_f1", "best_f1_thresh"} <= set(dev)
    assert dev["examples"] == len(ids) and 0 <= dev["exact"] <= dev["f1"] <= 100
    # It learns: answering "" everywhere scores the no-answer share, 4/24 = 16.7.
    assert dev["f1"] >= 50 and dev["best_f1"] >= dev["f1"], dev
    # The written predictions are the ones scored.
    from bertjax.finetuning import squad
    gold = json.load(open(os.path.join(FILES, "dev-v2.0.json")))
    assert squad.evaluate(gold, predictions)["f1"] == pytest.approx(dev["f1"])

    # The model, tokenizer, files and windows all come from the workdir: none on this line.
    again = run_finetune("--config=configs/squad.py:version=2.0",
                      "--config.eval_batch_size=16", f"--workdir={workdir}", "--eval_only")
    assert again.returncode == 0, again.stderr[-3000:]
    with open(os.path.join(workdir, "eval_metrics.json")) as f:
        redo = json.load(f)["dev"]
    for k in ("exact", "f1", "HasAns_f1", "NoAns_f1", "best_f1", "loss"):
        assert redo[k] == pytest.approx(dev[k], abs=1e-4), k


def test_cli_malformed_squad_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    data = json.load(open(os.path.join(FILES, "train-v1.1.json")))
    del data["data"][3]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"]
    bad.write_text(json.dumps(data))
    workdir = tmp_path / "bad_run"
    p = run_finetune("--config=configs/squad.py", *TINY, *WINDOWS, f"--config.data.train={bad}",
                  f"--config.data.dev={os.path.join(FILES, 'dev-v1.1.json')}",
                  f"--workdir={workdir}")
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "bad.json" in lines[-1]
    assert "data[3].paragraphs[0]" in lines[-1] and "answer_start" in lines[-1]
    assert not any("Traceback" in line for line in lines)
    assert not os.path.exists(workdir)
