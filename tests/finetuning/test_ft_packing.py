"""Packed fine-tuning rows (bertjax/finetuning/packing.py, config.data.examples_per_row).

The invariants: every example of an epoch is placed once, in rows that respect the row length
and slot count; a packed row gives each example the outputs it has alone; one optimizer step on
packed rows is the step on the same examples one per row. A packed fine-tuning run, scored
packed and one example per row, is in test_finetune.py.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from flax.core import meta

from bertjax import model as model_lib
from bertjax import optim
from bertjax import sharding
from bertjax import train
from bertjax.finetuning import classify
from bertjax.finetuning import packing
from bertjax.finetuning.defaults import finetune_config

from tests.finetuning.test_finetune import custom_config


def examples(n: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n left-aligned rows of 3..seq_len real tokens ([CLS]=1 ... [SEP]=2) and labels 0..2."""
    rng = np.random.default_rng(seed)
    lens = np.minimum(rng.geometric(1 / 12, n) + 2, seq_len)
    ids = np.zeros((n, seq_len), np.int32)
    seg = np.zeros((n, seq_len), np.int32)
    for i, m in enumerate(lens):
        ids[i, :m] = rng.integers(5, 40, m)
        ids[i, 0], ids[i, m - 1] = 1, 2
        seg[i, m // 2:m] = 1
    mask = (np.arange(seq_len) < lens[:, None]).astype(np.int32)
    return {"input_ids": ids, "input_mask": mask, "segment_ids": seg,
            "label": rng.integers(0, 3, n).astype(np.int32)}


def test_plan_places_each_example_once_per_epoch_within_rows_and_slots():
    data = examples(203, 32)
    lens = packing.lengths(data)
    rows = packing.rows_per_step(lens, 16, 32, 4, 2)
    assert rows % 2 == 0 and 4 <= rows < 16
    assert packing.rows_per_step(np.full(9, 3), 16, 32, 2, 2) == 8  # the slots bind
    plan = packing.TrainPlan(lens, 16, rows, 4, 32, seed=5)
    for e in range(2):
        steps = plan.epoch(e)
        used = [i for step in steps for r in step for i in r]
        assert len(used) == len(set(used)) > 203 - 16  # once each; < a batch left over
        for step in steps:
            assert len(step) <= rows and sum(len(r) for r in step) <= 16
            assert all(len(r) <= 4 and lens[r].sum() <= 32 for r in step)
        assert np.mean([sum(len(r) for r in s) for s in steps]) > 15.5  # the batch, nearly always
    assert plan.epoch(0) != plan.epoch(1)
    # global steps walk the epochs; a new plan (a resumed run) gives the same rows
    again = packing.TrainPlan(lens, 16, rows, 4, 32, seed=5)
    n0 = len(plan.epoch(0))
    assert again.step(n0 + 3) == plan.epoch(1)[3] and again.step(2) == plan.epoch(0)[2]


def test_pack_then_unpack_gives_back_every_example():
    data = examples(37, 24, seed=1)
    lens = packing.lengths(data)
    rows, left = packing.best_fit(lens, range(37), 3, 24)
    assert not left and packing.fill(lens, rows, 24) > packing.fill(lens, [[i] for i in
                                                                         range(37)], 24)
    batch, index = packing.pack(data, rows, 3, num_rows=len(rows) + 2)
    assert sorted(index[index >= 0].tolist()) == list(range(37))
    assert batch["example_mask"].sum() == 37 and not batch["example_mask"][-2:].any()
    for r, s in zip(*np.nonzero(index >= 0)):
        i, start = index[r, s], batch["cls_positions"][r, s]
        span = slice(start, start + lens[i])
        np.testing.assert_array_equal(batch["input_ids"][r, span], data["input_ids"][i, :lens[i]])
        np.testing.assert_array_equal(batch["position_ids"][r, span], np.arange(lens[i]))
        assert (batch["pack_ids"][r, span] == s + 1).all() and batch["label"][r, s] == data[
            "label"][i]
    assert (batch["pack_ids"] > 0).sum() == lens.sum() == batch["input_mask"].sum()
    per_slot = np.where(index[..., None] >= 0, index[..., None] * 10.0 + np.arange(2), 0)
    np.testing.assert_array_equal(packing.unpack(per_slot, index, 37),
                                  np.arange(37)[:, None] * 10.0 + np.arange(2))


@pytest.mark.parametrize("attention,pooling", [("explicit", "cls"), ("xla", "cls"),
                                               ("explicit", "mean"), ("xla", "mean")])
def test_packed_classifier_gives_each_example_its_own_outputs(attention, pooling):
    data = examples(12, 32, seed=2)
    cfg = model_lib.BertConfig(vocab_size=40, hidden_size=32, num_layers=2, num_heads=2,
                               intermediate_size=64, max_position_embeddings=32,
                               attention_impl=attention, initializer_range=0.3)
    model = classify.SequenceClassifier(cfg, 3, pooling=pooling)
    feats = {k: data[k] for k in packing.FEATURE_KEYS}
    params = model.init(jax.random.PRNGKey(0), *feats.values())["params"]
    apply = jax.jit(model.apply)
    alone = np.asarray(apply({"params": params}, *feats.values()))  # [12, 3]
    assert alone.std(axis=0).min() > 0.05  # outputs that differ between examples
    rows, _ = packing.best_fit(packing.lengths(data), range(12), 4, 32)
    batch, index = packing.pack(data, rows, 4)
    assert len(rows) < 12

    def run(pack_ids):
        return np.asarray(apply({"params": params}, batch["input_ids"],
                                      batch["input_mask"], batch["segment_ids"],
                                      position_ids=batch["position_ids"], pack_ids=pack_ids,
                                      cls_positions=batch["cls_positions"]))

    np.testing.assert_allclose(packing.unpack(run(batch["pack_ids"]), index, 12), alone,
                               rtol=1e-4, atol=1e-4)
    # examples of a row that see each other (no block-diagonal mask; for mean pooling, one
    # slot holding the whole row) do not give their outputs alone: the check can fail
    wrong = None if pooling == "cls" else (batch["pack_ids"] > 0).astype(np.int32)
    assert np.abs(packing.unpack(run(wrong), index, 12) - alone).max() > 1e-2


def test_mean_pooling_head_reads_the_mean_of_the_real_tokens():
    data = examples(6, 32, seed=4)
    cfg = model_lib.BertConfig(vocab_size=40, hidden_size=32, num_layers=2, num_heads=2,
                               intermediate_size=64, max_position_embeddings=32,
                               initializer_range=0.3)
    feats = [data[k] for k in ("input_ids", "input_mask", "segment_ids")]
    model = classify.SequenceClassifier(cfg, 3, head_dropout=0.0, pooling="mean")
    params = meta.unbox(model.init(jax.random.PRNGKey(0), *feats)["params"])
    logits = np.asarray(model.apply({"params": params}, *feats))
    seq, _ = model_lib.BertModel(cfg).apply({"params": params["bert"]}, *feats)
    m = data["input_mask"][..., None]
    mean = (np.asarray(seq) * m).sum(1) / m.sum(1)
    head = params["classifier"]
    np.testing.assert_allclose(logits, mean @ head["kernel"] + head["bias"], rtol=1e-5,
                               atol=1e-5)
    cls = np.asarray(classify.SequenceClassifier(cfg, 3, head_dropout=0.0, pooling="cls")
                     .apply({"params": params}, *feats))
    assert np.abs(cls - logits).max() > 1e-2  # the two heads read different vectors


@pytest.mark.slow
def test_one_step_on_packed_rows_is_the_step_on_the_examples_alone():
    data = examples(16, 32, seed=3)
    cfg = model_lib.BertConfig(vocab_size=40, hidden_size=32, num_layers=1, num_heads=2,
                               intermediate_size=64, max_position_embeddings=32,
                               hidden_dropout=0.0, attention_dropout=0.0)
    model = classify.SequenceClassifier(cfg, 3, head_dropout=0.0)
    c = finetune_config("custom")
    c.total_steps, c.optim.warmup_steps, c.optim.lr = 10, 0, 1e-3
    mesh = sharding.make_mesh(2, 2, 2)
    rules = tuple(sharding.DEFAULT_RULES)
    tx, schedule = optim.make_optimizer(c)
    rows, _ = packing.best_fit(packing.lengths(data), range(16), 4, 32, max_rows=8)
    packed, _ = packing.pack(data, rows, 4, num_rows=8)
    single = {**data, "example_mask": np.ones(16, np.float32)}
    state, sh = train.create_train_state(model, tx, mesh, rules, 0, train.task_inputs(32))
    fns = train.StepFns(model=model, tx=tx, schedule=schedule, mesh=mesh, rules=rules,
                        state_shardings=sh)
    results = []
    for batch in (single, packed):
        step, _ = classify.jit_steps(fns, batch, regression=False)
        fresh = jax.tree.map(lambda x: x.copy(), state)  # the step donates its state
        new, metrics = step(fresh, {k: jax.device_put(v, s) for (k, v), s in zip(
            batch.items(), train.batch_shardings(fns, batch).values())})
        results.append((jax.device_get(metrics), jax.device_get(new.params)))
    (m1, p1), (m2, p2) = results
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-5)
    assert m1["accuracy"] == m2["accuracy"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), p1, p2)


def test_examples_per_row_errors(tmp_path):
    for m, match in ((0, "expected 1"), (6, "up to 5")):
        with pytest.raises(classify.config_lib.ConfigError, match=match):  # before any reading
            classify.run(custom_config(str(tmp_path), examples_per_row=m), str(tmp_path / "a"))
    assert not os.path.exists(tmp_path / "a")
    c = finetune_config("ner")
    c.data.examples_per_row = 2
    with pytest.raises(classify.config_lib.ConfigError, match="one example per row"):
        packing.check(c, packs=False)
