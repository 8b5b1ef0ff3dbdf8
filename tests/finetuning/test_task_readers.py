"""Downstream-task readers on the small files in tests/finetuning/files, including the error lines."""

from __future__ import annotations

import os

import pytest

from bertjax.data import tasks as readers
from bertjax.data.errors import DataError

FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files")


def f(*parts: str) -> str:
    return os.path.join(FILES, *parts)


def test_glue_mrpc_train_quotes_are_text_and_bom_is_ignored():
    ex = readers.read_glue(f("glue", "MRPC", "train.tsv"), "mrpc")
    assert [e["label"] for e in ex] == [1, 0, 1]
    # quoting=none: quote characters stay in the text, even an unbalanced one.
    assert ex[0]["text_a"] == 'Amrozi accused his brother , whom he called " the witness " .'
    assert ex[2]["text_a"] == 'They had published an "advertisement'
    assert ex[1]["text_b"].endswith("$ 693 million .")
    assert ex[0]["guid"] == "train.tsv:2"


def test_glue_test_file_has_no_labels_and_keeps_index():
    ex = readers.read_glue(f("glue", "MRPC", "test.tsv"), "mrpc")
    assert [(e["guid"], e["label"]) for e in ex] == [("0", None), ("1", None)]
    assert ex[1]["text_b"] == "Domestic sales tied for first place ."


def test_glue_cola_headerless_dev_and_headed_test():
    dev = readers.read_glue(f("glue", "CoLA", "dev.tsv"), "cola")
    assert [(e["text_a"], e["label"], e["text_b"]) for e in dev] == [
        ("The sailors rode the breeze clear of the rocks.", 1, None),
        ('The more you eat, the more you want "it.', 0, None)]
    test = readers.read_glue(f("glue", "CoLA", "test.tsv"), "cola")
    assert test == [{"guid": "0", "text_a": "Bill whistled past the house.", "text_b": None,
                     "label": None}]


def test_glue_mnli_gold_label_and_stsb_scores():
    ex = readers.read_glue(f("glue", "MNLI", "dev_matched.tsv"), "mnli")
    # Table order: contradiction=0, entailment=1, neutral=2.
    assert [e["label"] for e in ex] == [2, 0]
    assert ex[0]["text_b"] == "Everyone really likes the newest benefits"
    sts = readers.read_glue(f("glue", "STS-B", "dev.tsv"), "sts-b")
    assert [e["label"] for e in sts] == [5.0, 4.75]


def test_glue_qqp_skips_broken_rows():
    ex = readers.read_glue(f("glue", "QQP", "train.tsv"), "qqp")
    assert [(e["guid"], e["label"]) for e in ex] == [("133273", 0), ("360472", 1)]


def test_glue_errors_name_file_line_value_and_choices():
    path = f("glue", "MRPC", "dev_bad_label.tsv")
    with pytest.raises(DataError) as e:
        readers.read_glue(path, "mrpc")
    assert str(e.value) == (f"{path}:3: label 'yes' is not one of the allowed labels ['0', '1']; "
                            f"fix the row or add the label to the label list")
    # Wrong task for the file: the missing column is named, with the columns present.
    with pytest.raises(DataError, match=r"column 'question1' not found; columns present: "
                                        r"\['Quality', '#1 ID'"):
        readers.read_glue(f("glue", "MRPC", "train.tsv"), "qqp")
    with pytest.raises(DataError, match="file not found"):
        readers.read_glue(f("glue", "nope.tsv"), "rte")


def test_table_csv_with_quoting():
    ex = readers.read_table(f("table", "reviews.csv"), "review", label="verdict",
                            labels=["neg", "pos"])
    assert [(e["text_a"], e["label"]) for e in ex] == [
        ("Great, would buy again", 1), ("Two\nlines", 0), ("Meh", 0)]
    assert ex[2]["guid"] == "reviews.csv:5"  # the quoted newline makes row 2 span lines 3-4
    # Unlabelled (prediction) input.
    assert readers.read_table(f("table", "reviews.csv"), "review")[0]["label"] is None


def test_table_jsonl_pairs_and_tsv_regression():
    ex = readers.read_table(f("table", "pairs.jsonl"), "q", "p", "y", labels=["no", "yes"])
    assert [(e["text_a"], e["text_b"], e["label"]) for e in ex] == [
        ("Is it red?", "The car is red.", 1), ("Is it blue?", "The car is red.", 0)]
    assert ex[1]["guid"] == "pairs.jsonl:3"  # blank line 2 skipped
    ex = readers.read_table(f("table", "scores.tsv"), "s1", "s2", "score", regression=True)
    assert [(e["text_a"], e["label"]) for e in ex] == [('A "b', 0.5), ("d", 3.0)]


def test_table_errors():
    bad = f("table", "bad_label.jsonl")
    with pytest.raises(DataError) as e:
        readers.read_table(bad, "q", "p", "y", labels=["no", "yes"])
    assert str(e.value) == (f"{bad}:2: label 'maybe' is not one of the allowed labels "
                            f"['no', 'yes']; fix the row or add the label to the label list")
    missing = f("table", "missing_column.jsonl")
    with pytest.raises(DataError) as e:
        readers.read_table(missing, "q", "p", "y", labels=["no", "yes"])
    assert str(e.value) == (f"{missing}:2: column 'q' not found; columns present: "
                            f"['question', 'p', 'y']. Pass the right column name")
    with pytest.raises(DataError, match=r"reviews.csv:1: column 'text' not found; columns "
                                        r"present: \['id', 'review', 'verdict'\]"):
        readers.read_table(f("table", "reviews.csv"), "text")
    with pytest.raises(DataError, match="needs the list of labels"):
        readers.read_table(f("table", "reviews.csv"), "review", label="verdict")
    with pytest.raises(DataError, match=r"label 'pos' is not a number"):
        readers.read_table(f("table", "reviews.csv"), "review", label="verdict", regression=True)
    with pytest.raises(DataError, match="unknown table format '.txt'"):
        readers.read_table(f("conll", "short_row.txt"), "a")


def test_squad_v2(tmp_path):
    ex = readers.read_squad(f("squad", "dev-v2.0.json"))
    assert [(e["id"], e["is_impossible"], len(e["answers"])) for e in ex] == [
        ("q1", False, 2), ("q2", True, 0)]
    q1 = ex[0]
    for a in q1["answers"]:  # the fixture's offsets are right
        assert q1["context"][a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"]
    assert q1["title"] == "Super_Bowl_50"
    with pytest.raises(DataError, match="bad_label.jsonl: not a SQuAD JSON file"):
        readers.read_squad(f("table", "bad_label.jsonl"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="list.json: no top-level 'data' list"):
        readers.read_squad(str(tmp_path / "list.json"))


def test_conll():
    ex = readers.read_conll(f("conll", "eng.testa"))
    assert [(e["words"], e["tags"]) for e in ex] == [
        (["EU", "rejects", "German", "call", "."], ["I-ORG", "O", "I-MISC", "O", "O"]),
        (["Peter", "Blackburn"], ["I-PER", "I-PER"]),
        (["BRUSSELS"], ["I-LOC"])]
    assert ex[0]["guid"] == "eng.testa:3"
    # Another column: the chunk tags.
    assert readers.read_conll(f("conll", "eng.testa"), tag_column=2)[1]["tags"] == ["B-NP", "I-NP"]
    path = f("conll", "short_row.txt")
    with pytest.raises(DataError) as e:
        readers.read_conll(path)
    assert str(e.value).startswith(f"{path}:2: 1 columns in 'rejects'; expected at least 2")


def test_tfds_glue_mrpc_mock():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=4):
        ex = readers.tfds_examples("glue/mrpc", "train")
    assert len(ex) == 4
    for e in ex:
        assert isinstance(e["text_a"], str) and isinstance(e["text_b"], str)
        assert e["label"] in (0, 1) and isinstance(e["guid"], str)


def test_tfds_mnli_labels_remapped_by_name_and_conll_tags():
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow as tf

    def mnli(self, split, **kwargs):
        # TFDS order: entailment=0, neutral=1, contradiction=2; test rows carry -1.
        return tf.data.Dataset.from_tensor_slices({
            "premise": [b"p0", b"p1", b"p2", b"p3"], "hypothesis": [b"h0", b"h1", b"h2", b"h3"],
            "label": tf.constant([0, 1, 2, -1], tf.int64), "idx": tf.constant([0, 1, 2, 3])})

    with tfds.testing.mock_data(as_dataset_fn=mnli):
        ex = readers.tfds_examples("glue/mnli", "validation_matched")
    # Table order: contradiction=0, entailment=1, neutral=2.
    assert [e["label"] for e in ex] == [1, 2, 0, None]
    assert ex[3] == {"guid": "3", "text_a": "p3", "text_b": "h3", "label": None}

    def conll(self, split, **kwargs):
        def gen():
            yield {"tokens": [b"EU", b"rejects"], "ner": [3, 0], "pos": [0, 0], "chunks": [0, 0]}
            yield {"tokens": [b"Peter"], "ner": [1], "pos": [0], "chunks": [0]}
        spec = tf.TensorSpec([None], tf.int64)
        return tf.data.Dataset.from_generator(gen, output_signature={
            "tokens": tf.TensorSpec([None], tf.string), "ner": spec, "pos": spec, "chunks": spec})

    with tfds.testing.mock_data(as_dataset_fn=conll):
        ex = readers.tfds_examples("conll2003", "test")
    assert ex == [{"guid": "test:0", "words": ["EU", "rejects"], "tags": ["B-ORG", "O"]},
                  {"guid": "test:1", "words": ["Peter"], "tags": ["B-PER"]}]


def test_tfds_errors(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match="is not supported"):
        readers.tfds_examples("imdb_reviews", "train")
    with pytest.raises(DataError, match=r"is not prepared in .*; run `tfds build glue/rte"):
        readers.tfds_examples("glue/rte", "train", data_dir=str(tmp_path))


def test_import_hygiene():
    # The readers must not pull in JAX (nor TensorFlow until TFDS is asked for); the task
    # metrics/post-processing must import neither, so evaluation runs on any host.
    import subprocess
    import sys
    code = ("import sys, bertjax.data.glue, bertjax.data.tasks, bertjax.finetuning.metrics, "
            "bertjax.finetuning.squad, bertjax.finetuning.ner; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'jax', 'flax', 'tensorflow', 'tensorflow_datasets'}))")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=root), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_table_jsonl_numeric_labels_match_their_text(tmp_path):
    # JSON numbers are matched by their JSON text, so labels=["0", "1"] accepts 0 and 1.
    path = tmp_path / "nums.jsonl"
    path.write_text('{"t": "a", "y": 1}\n{"t": "b", "y": 0}\n{"t": "c", "y": 2}\n')
    with pytest.raises(DataError, match=r"nums.jsonl:3: label '2' is not one of"):
        readers.read_table(str(path), "t", label="y", labels=["0", "1"])
    path.write_text('{"t": "a", "y": 1}\n{"t": "b", "y": 0}\n')
    assert [e["label"] for e in readers.read_table(str(path), "t", label="y",
                                                   labels=["0", "1"])] == [1, 0]
