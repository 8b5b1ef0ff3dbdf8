"""The shared fine-tuning loop (bertjax.finetuning.runner): an interrupted run resumes where it
stopped and ends exactly where the uninterrupted one does; a finished or differently configured
workdir is refused; the family registry.

Runs use the classification family on tests/finetuning/files/finetune with a tiny encoder from random
init (no import to build), 24 steps, a resumable checkpoint every 8.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest

from bertjax import config as config_lib
from bertjax import rundir
from bertjax.finetuning import classify
from bertjax.finetuning import families
from bertjax.finetuning import run_settings
from bertjax.finetuning import runner
from bertjax.finetuning.defaults import finetune_config

FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files", "finetune")


def _config() -> ml_collections.ConfigDict:
    c = finetune_config("custom")
    c.tokenizer = os.path.join(FILES, "vocab")
    c.model.update(preset="custom", num_layers=1, hidden_size=32, num_heads=2,
                   intermediate_size=64, vocab_size=40, max_position_embeddings=64,
                   hidden_dropout=0.1, attention_dropout=0.1)  # dropout: the RNG must resume too
    c.data.train, c.data.dev = os.path.join(FILES, "train.tsv"), os.path.join(FILES, "dev.tsv")
    c.data.text_a, c.data.labels = "sentence", "neg,pos"
    c.max_seq_length, c.global_batch_size, c.eval_batch_size = 16, 16, 8
    c.total_steps, c.eval_every, c.checkpoint_every, c.optim.lr = 24, 12, 8, 2e-3
    c.tensorboard = False
    return c


class Stop(Exception):
    pass


def _stop_after(monkeypatch, steps: int) -> None:
    """The next run's train step raises after ``steps`` calls, like a killed process."""
    original = runner.jit_steps

    def jit_steps(fns, like, loss_stats):
        step, evaluate = original(fns, like, loss_stats)
        calls = [0]

        def counted(state, batch):
            calls[0] += 1
            if calls[0] > steps:
                raise Stop
            return step(state, batch)
        return counted, evaluate

    monkeypatch.setattr(runner, "jit_steps", jit_steps)


@pytest.mark.slow
def test_resume_ends_where_the_uninterrupted_run_does(tmp_path, monkeypatch):
    whole = classify.run(_config(), str(tmp_path / "whole"))
    _stop_after(monkeypatch, 19)  # past the best (12) and latest (16) checkpoints
    with pytest.raises(Stop):
        classify.run(_config(), str(tmp_path / "cut"))
    assert os.path.isdir(tmp_path / "cut" / runner.LATEST / "16")
    with pytest.raises(config_lib.ConfigError, match="unfinished.*total_steps=30"):
        _resume_with(tmp_path, total_steps=30)
    monkeypatch.undo()
    resumed = classify.run(_config(), str(tmp_path / "cut"))
    assert resumed["best_step"] == whole["best_step"]
    np.testing.assert_allclose(resumed["dev"]["loss"], whole["dev"]["loss"], rtol=1e-6)
    assert resumed["dev"]["accuracy"] == whole["dev"]["accuracy"]
    for name in ("whole", "cut"):
        assert not os.path.exists(tmp_path / name / runner.LATEST)  # finished: nothing to resume
    dev_lines = [json.loads(l) for l in open(tmp_path / "cut" / "metrics.jsonl")
                 if '"dev"' in l]
    assert [d["step"] for d in dev_lines] == [12, 24]  # 12 before the cut, 24 after it
    with pytest.raises(config_lib.ConfigError, match="already holds"):
        classify.run(_config(), str(tmp_path / "cut"))


def _resume_with(tmp_path, **changes):
    c = _config()
    c.update(changes)
    classify.run(c, str(tmp_path / "cut"))


def test_family_registry():
    c = finetune_config("sst2")
    assert isinstance(families.get(c), classify.ClassifyFamily)
    c.task = "ner"
    assert families.family_name(c) == "ner"
    c.family = "nope"
    with pytest.raises(config_lib.ConfigError, match="'nope'.*classify"):
        families.get(c)


@pytest.mark.slow
def test_rng_impl_draws_the_dropout_bits_and_belongs_to_the_run(tmp_path):
    from bertjax import checkpoint as ckpt_lib
    from bertjax import train

    def short(**kw):
        c = _config()
        c.total_steps, c.eval_every, c.checkpoint_every = 4, 4, 4
        c.update(kw)
        return c

    try:
        threefry = classify.run(short(), str(tmp_path / "threefry"))
        rbg = classify.run(short(rng_impl="rbg"), str(tmp_path / "rbg"))
        again = classify.run(short(rng_impl="rbg"), str(tmp_path / "rbg_again"))
        evaluated = classify.run(short(), str(tmp_path / "rbg"), eval_only=True)
    finally:
        train.use_rng_impl("threefry2x32")  # process-wide: later tests expect the default
    assert rbg["dev"]["loss"] != threefry["dev"]["loss"]  # other dropout masks, other weights
    assert again["dev"]["loss"] == rbg["dev"]["loss"]  # and still deterministic
    assert evaluated["dev"]["loss"] == pytest.approx(rbg["dev"]["loss"], rel=1e-6)
    saved = ckpt_lib.config_to_json(short())
    del saved["rng_impl"]  # written before the key existed: it ran with threefry
    saved = rundir.upgrade(saved)  # as every reader of a saved config gets it
    assert runner.setting_difference(saved, short()) is None
    assert "rng_impl='rbg'" in runner.setting_difference(saved, short(rng_impl="rbg"))
    with pytest.raises(config_lib.ConfigError, match="rng_impl='philox'"):
        classify.run(short(rng_impl="philox"), str(tmp_path / "bad"))
    assert not os.path.exists(tmp_path / "bad")


def test_automatic_learning_rate_follows_the_encoder_width():
    c = finetune_config("custom")
    assert c.optim.lr == 0  # the fine-tuning configs' default: automatic
    rates = {w: run_settings.learning_rate(c, w)[0] for w in (128, 256, 384, 768, 1024)}
    assert rates == {128: 1e-3, 256: 4.5e-4, 384: 2e-4, 768: 5e-5, 1024: 2.8e-5}
    c.optim.lr = 3e-4  # a rate given is the rate used
    assert run_settings.learning_rate(c, 768) == (3e-4, "config.optim.lr")
    c.optim.lr = -1e-3
    with pytest.raises(config_lib.ConfigError, match="expected 0 < lr < 1, or 0 for the auto"):
        run_settings.learning_rate(c, 768)


def test_a_run_at_the_automatic_rate_trains_at_it_and_saves_0(tmp_path):
    c = _config()
    c.optim.lr, c.total_steps, c.eval_every, c.log_every, c.optim.warmup_steps = 0.0, 4, 4, 1, 0
    classify.run(c, str(tmp_path / "a"))
    with open(tmp_path / "a" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f if '"train"' in line]
    # width 32: 5e-5 * (768 / 32)^2 = 2.9e-2, capped at 1e-3; linear decay from step 0
    assert rows[0]["learning_rate"] == pytest.approx(1e-3, rel=1e-6)
    assert rundir.saved_config(str(tmp_path / "a"))["optim"]["lr"] == 0.0  # "auto"


def test_a_negative_learning_rate_is_refused_before_anything_is_written(tmp_path):
    c = _config()
    c.optim.lr = -1e-3
    with pytest.raises(config_lib.ConfigError, match="config.optim.lr=-0.001"):
        classify.run(c, str(tmp_path / "a"))
    assert not os.path.exists(tmp_path / "a" / "predictions")
    assert not os.path.exists(tmp_path / "a" / "checkpoints")
