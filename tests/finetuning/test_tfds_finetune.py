"""Fine-tuning from TFDS (``config.data.tfds``) with tfds.testing.mock_data: nothing is
downloaded or prepared; the mock hands the builder's splits the rows given here.

  * conll2003: the NER test files (tests/finetuning/files/ner) served as the train and validation
    splits, tag names mapped through the dataset's own ClassLabel;
    (and TensorBoard event files are written: TensorFlow is loaded here anyway);
  * glue/mnli: the default splits (validation_matched as dev, validation_mismatched reported
    as dev_mismatched, with its own predictions file), labels through MNLI's TFDS order.
"""

from __future__ import annotations

import json
import os

import pytest

from bertjax import rundir

from bertjax.data import tasks as readers
from bertjax.finetuning import classify
from bertjax.finetuning import runner
from bertjax.finetuning import tagging
from bertjax.finetuning.defaults import finetune_config
from configs import ner as ner_config
from tests.finetuning.test_tagging import FILES, LABELS, make_import

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> str:
    return make_import(str(tmp_path_factory.mktemp("imported")))


def _rows(builder, split):
    """The rows mock_data serves for ``split`` of ``builder`` (what a prepared dataset holds)."""
    split = str(split)
    if builder.name == "conll2003":
        names = builder.info.features["ner"].feature.names
        path = os.path.join(FILES, "train.conll" if split == "train" else "dev.conll")
        for s in readers.read_conll(path):
            yield {"tokens": s["words"], "ner": [names.index(t) for t in s["tags"]]}
        return
    names = builder.info.features["label"].names  # MNLI in TFDS: entailment, neutral, ...
    n = {"train": 48, "validation_matched": 21, "validation_mismatched": 13}[split]
    for i in range(n):
        label = ("entailment", "contradiction")[i % 2]
        yield {"premise": f"the cat sits in {'oslo' if i % 3 else 'paris'}",
               "hypothesis": "the cat sits" if label == "entailment" else "the dog runs",
               "label": names.index(label), "idx": i}


def _as_dataset(builder, split, decoders=None, read_config=None, **kwargs):
    first = next(iter(_rows(builder, split)))
    spec = {k: tf.TensorSpec([None] if isinstance(v, list) else [],
                             tf.string if isinstance(v[0] if isinstance(v, list) else v, str)
                             else tf.int64 if k != "idx" else tf.int32)
            for k, v in first.items()}
    return tf.data.Dataset.from_generator(lambda: _rows(builder, split), output_signature=spec)


@pytest.mark.slow
def test_conll2003_from_tfds(imported, tmp_path):
    c = ner_config.get_config()
    c.init_from = imported
    c.data.tfds, c.data.tfds_data_dir = "conll2003", str(tmp_path / "tfds")
    c.max_seq_length, c.global_batch_size, c.eval_batch_size = 16, 16, 8
    c.total_steps, c.eval_every, c.optim.lr = 40, 40, 2e-3
    c.model.hidden_dropout = c.model.attention_dropout = 0.0
    with tfds.testing.mock_data(as_dataset_fn=_as_dataset, data_dir=c.data.tfds_data_dir):
        result = runner.run(c, str(tmp_path / "ner"), tagging.TaggingFamily())
    assert result["dev"]["examples"] == 37 and result["train_examples"] == 128
    assert result["dev"]["f1"] > 0.6, result["dev"]
    # the train split's tags, "O" first, recorded in the saved config (the caller's config is
    # not changed)
    saved = rundir.saved_config(str(tmp_path / "ner"))
    assert saved["data"]["labels"] == ",".join(LABELS) and c.data.labels == ""
    assert os.path.exists(tmp_path / "ner" / "predictions" / "dev.conll")
    assert not os.path.exists(tmp_path / "tfds")  # nothing downloaded or prepared
    for split in ("train", "dev"):  # TensorBoard scalars (config.tensorboard, on by default)
        assert os.listdir(tmp_path / "ner" / "tb" / split), split


@pytest.mark.slow
def test_mnli_from_tfds_reports_mismatched_dev(imported, tmp_path):
    c = finetune_config("mnli")
    c.init_from = imported
    c.data.tfds, c.data.tfds_data_dir = "glue/mnli", str(tmp_path / "tfds")
    c.max_seq_length, c.global_batch_size, c.eval_batch_size = 16, 16, 8
    c.total_steps, c.eval_every, c.optim.lr = 60, 60, 2e-3
    c.model.hidden_dropout = c.model.attention_dropout = 0.0
    workdir = tmp_path / "mnli"
    with tfds.testing.mock_data(as_dataset_fn=_as_dataset, data_dir=c.data.tfds_data_dir):
        result = classify.run(c, str(workdir))
    assert result["dev"]["examples"] == 21 and result["dev_mismatched"]["examples"] == 13
    assert result["dev"]["accuracy"] >= 0.8, result  # hypothesis words give the label away
    saved = json.loads((workdir / "metrics.json").read_text())
    assert saved["dev_mismatched"]["accuracy"] == pytest.approx(
        result["dev_mismatched"]["accuracy"])
    rows = (workdir / "predictions" / "dev_mismatched.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 14
    assert {r.split("\t")[1] for r in rows[1:]} <= {"entailment", "contradiction"}
    # the gold labels came through TFDS's label order: dev predictions agree with them
    dev = (workdir / "predictions" / "dev.tsv").read_text().splitlines()[1:]
    right = sum(r.split("\t")[1] == ("entailment", "contradiction")[i % 2]
                for i, r in enumerate(dev))
    assert right / len(dev) == pytest.approx(result["dev"]["accuracy"])
