"""Bad fine-tuning inputs end in one line, before anything is compiled or written.

Each command case runs ``python -m bertjax.finetune`` (or ``bertjax.glue``) as a user does, on
small files written here or kept in tests/finetuning/files, and checks the contract of
tests/commands.py: exit 2, exactly one ``error:`` line naming the file, row or value, what was
expected and the fix, no traceback, and the workdir (which holds a file beforehand) unchanged.
The encoder is a tiny one from random init with the test vocabularies (``--config.tokenizer``),
so no import has to be built. Beside them, in-process checks of what needs no command: the
readers' lines for every format, ``--eval_only`` taking the workdir's columns, tag-scheme
order, SQuAD offsets from TFDS, and the training speed of a run that evaluates every step.
"""

from __future__ import annotations

import json
import os
import time
import types

import ml_collections
import numpy as np
import pytest

from bertjax import checkpoint as ckpt_lib
from bertjax import config as config_lib
from bertjax import rundir
from bertjax.data import tasks as readers
from bertjax.data.errors import DataError
from bertjax.finetuning import families
from bertjax.finetuning import qa
from bertjax.finetuning import run_settings
from bertjax.finetuning import runner
from bertjax.finetuning import tagging
from bertjax.finetuning.defaults import finetune_config
from tests import commands

HERE = os.path.dirname(os.path.abspath(__file__))
FT = os.path.join(HERE, "files", "finetune")  # train.tsv / dev.tsv: sentence, label neg|pos
NER = os.path.join(HERE, "files", "ner")
SQUAD = os.path.join(HERE, "files", "squad", "capitals")
TINY = ("--config.model.preset=custom", "--config.model.num_layers=1",
        "--config.model.hidden_size=32", "--config.model.num_heads=2",
        "--config.model.intermediate_size=64", "--config.model.vocab_size=64",
        "--config.model.max_position_embeddings=64", "--config.tensorboard=False")


# ----------------------------------------------------------------------------------- helpers


def _workdir(tmp_path) -> str:
    """A workdir that exists and holds a file, so 'unchanged' means something."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("mine\n")
    return str(workdir)


def _write(tmp_path, name: str, text: str | bytes) -> str:
    path = tmp_path / name
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return str(path)


def _refused(tmp_path, command: str, args: list[str], *fragments: str) -> str:
    """Runs the command into a prepared workdir; one error line, the workdir unchanged."""
    workdir = _workdir(tmp_path)
    before = commands.checksums(workdir)
    result = commands.run(command, *args, f"--workdir={workdir}")
    line = commands.assert_one_error(result, *fragments)
    assert commands.checksums(workdir) == before
    return line


def _custom(*flags: str, **data) -> list[str]:
    """The arguments of a custom classification run: train.tsv / dev.tsv of
    tests/finetuning/files/finetune unless ``data`` (config.data keys) says otherwise."""
    settings = {"train": os.path.join(FT, "train.tsv"), "dev": os.path.join(FT, "dev.tsv"),
                "text_a": "sentence", "labels": "neg,pos", **data}
    return ["--config=configs/glue.py:task=custom",
            f"--config.tokenizer={os.path.join(FT, 'vocab')}", *TINY,
            "--config.max_seq_length=16", "--config.global_batch_size=16",
            "--config.eval_batch_size=8",
            *(f"--config.data.{k}={v}" for k, v in settings.items()), *flags]


def _ner(*flags: str, **data) -> list[str]:
    settings = {"train": os.path.join(NER, "train.conll"), "dev": os.path.join(NER, "dev.conll"),
                **data}
    return ["--config=configs/ner.py", f"--config.tokenizer={os.path.join(NER, 'vocab')}",
            *TINY, "--config.max_seq_length=16", "--config.global_batch_size=16",
            "--config.eval_batch_size=8",
            *(f"--config.data.{k}={v}" for k, v in settings.items()), *flags]


def _squad(*flags: str, **data) -> list[str]:
    settings = {"train": os.path.join(SQUAD, "train-v1.1.json"),
                "dev": os.path.join(SQUAD, "dev-v1.1.json"), **data}
    return ["--config=configs/squad.py", f"--config.tokenizer={os.path.join(SQUAD, 'vocab')}",
            *TINY, "--config.max_seq_length=48", "--config.data.doc_stride=16",
            "--config.data.max_query_length=16", "--config.global_batch_size=16",
            "--config.eval_batch_size=16",
            *(f"--config.data.{k}={v}" for k, v in settings.items()), *flags]


def _squad_file(tmp_path, name: str, source: str, change) -> str:
    """A copy of a SQuAD fixture with ``change(data)`` applied, written with indent so that
    it has lines."""
    with open(os.path.join(SQUAD, source)) as f:
        data = json.load(f)
    change(data)
    return _write(tmp_path, name, json.dumps(data, indent=1, ensure_ascii=False))


def _first_qa(data: dict) -> dict:
    return data["data"][0]["paragraphs"][0]["qas"][0]


# ------------------------------------------------------------- 1. empty text in a custom file


@pytest.mark.parametrize("name,text,where", [
    ("train.csv", "sentence,label\nthe cat runs,pos\n,neg\n", ":3: column 'sentence' is empty"),
    ("train.jsonl", '{"sentence": "the cat", "label": "pos"}\n{"sentence": "  ", "label": "neg"}\n',
     ":2: column 'sentence' is whitespace only"),
    ("train.tsv", "sentence\tb\tlabel\nthe cat\tsits\tpos\nthe dog\t \tneg\n",
     ":3: column 'b' is whitespace only"),
])
def test_a_row_without_text_is_refused_naming_file_and_row(tmp_path, name, text, where):
    path = _write(tmp_path, name, text)
    pair = {"text_b": "b"} if "'b'" in where else {}
    _refused(tmp_path, "finetune", _custom(train=path, **pair), f"{path}{where}",
             "every row needs text: fill it in or remove the row")


# --------------------------------------------------------------------- 2. duplicate labels


def test_a_label_listed_twice_is_refused(tmp_path):
    _refused(tmp_path, "finetune", _custom(labels="neg,pos,pos"),
             "config.data.labels='neg,pos,pos' lists 'pos' more than once", "class-id order")


def test_a_tag_listed_twice_is_refused(tmp_path):
    _refused(tmp_path, "finetune", _ner(labels="O,B-LOC,I-LOC,B-LOC,B-PER,I-PER"),
             "lists 'B-LOC' more than once")


# -------------------------------------------------- 3. a SQuAD answer away from answer_start


def test_a_training_answer_not_at_its_answer_start_is_refused(tmp_path):
    def shift(data):
        _first_qa(data)["answers"][0]["answer_start"] -= 5  # 'Linford' is at 25

    path = _squad_file(tmp_path, "train.json", "train-v1.1.json", shift)
    _refused(tmp_path, "finetune", _squad(train=path),
             f"{path}: question 'v1.1-1-0-0': answer 'Linford' has answer_start 20, but the "
             "context there reads 'r is Li' ('Linford' occurs at 25)",
             "fix answer_start")


def test_answer_offsets_tolerated_where_they_are_not_trained_on():
    examples = readers.read_squad(os.path.join(SQUAD, "train-v1.1.json"))[:3]
    shifted = [dict(e, answers=[dict(a, answer_start=a["answer_start"] - 2)
                                for a in e["answers"]]) for e in examples]
    # dev: scores compare texts, as the official script does (answer_start is not read)
    qa.check_examples(shifted, "dev.json", version_2=False, labelled=True)
    # TFDS squad before 3.0.0 dropped contexts' leading whitespace, shifting 19 answers'
    # offsets: from TFDS the occurrence nearest to answer_start is trained
    qa.check_examples(shifted, "tfds:squad/v1.1:train", False, True, training=True,
                      exact=False)
    with pytest.raises(DataError, match="'Linford' has answer_start 23"):
        qa.check_examples(shifted, "train.json", False, True, training=True)
    gone = [dict(examples[0], answers=[{"text": "Atlantis", "answer_start": 3}])]
    with pytest.raises(DataError, match="'Atlantis' does not occur in the context at all"):
        qa.check_examples(gone, "tfds:squad/v1.1:train", False, True, training=True,
                          exact=False)


# --------------------------------------------- 4. CoNLL oddities and bytes that are not UTF-8


@pytest.mark.parametrize("third", ["paris B-LOC", "paris NNP"])  # no POS, no tag
def test_conll_line_with_another_column_count_is_refused(tmp_path, third):
    path = _write(tmp_path, "train.conll", f"the DT O\nhouse NN O\n{third}\n\n")
    _refused(tmp_path, "finetune", _ner(train=path),
             f"{path}:3: 2 columns in {third!r} but line 1 has 3",
             "every token line needs the same columns")


def test_conll_docstart_inside_a_sentence_is_refused(tmp_path):
    path = _write(tmp_path, "train.conll", "the O\nhouse O\n-DOCSTART- O\n\nparis B-LOC\n")
    _refused(tmp_path, "finetune", _ner(train=path),
             f"{path}:3: -DOCSTART- inside the sentence that starts at line 1",
             "blank line before it")


def test_iob1_tags_under_the_iob2_scheme_are_refused_with_the_fix(tmp_path):
    path = _write(tmp_path, "train.conll", "the O\ncat O\nin O\nparis I-LOC\n\n")
    _refused(tmp_path, "finetune", _ner(train=path),
             f"{path}:4: tag 'I-LOC' of word 'paris' follows 'O', but in IOB2 an I-LOC "
             "continues a B-LOC or I-LOC", "--config.data.scheme=IOB1")


def test_iobes_order_and_iob1_freedom():
    def check(tags, scheme):
        sentence = {"guid": "t.conll:1", "words": [f"w{i}" for i in range(len(tags))],
                    "tags": tags}
        tagging.check_tags([sentence], scheme, "t.conll")

    check(["B-PER", "I-PER", "E-PER", "O", "S-LOC"], "IOBES")
    check(["I-PER", "B-PER", "O", "I-LOC"], "IOB1")  # IOB1 entities start with I-
    with pytest.raises(DataError, match=r"t.conll:1: tag 'B-PER' of word 'w0' is followed by "
                                        r"'O', but in IOBES .*one word alone is S-PER"):
        check(["B-PER", "O"], "IOBES")
    with pytest.raises(DataError, match=r"t.conll:2: tag 'E-LOC' of word 'w1' follows 'S-PER'"):
        check(["S-PER", "E-LOC"], "IOBES")
    with pytest.raises(DataError, match=r"t.conll:1: tag 'I-PER' of word 'w0' starts its "
                                        r"sentence, but in IOB2"):
        check(["I-PER"], "IOB2")


@pytest.mark.parametrize("name,reader", [
    ("f.csv", lambda p: readers.read_table(p, "sentence", label="label", labels=["neg", "pos"])),
    ("f.tsv", lambda p: readers.read_table(p, "sentence", label="label", labels=["neg", "pos"])),
    ("f.jsonl", lambda p: readers.read_table(p, "sentence", label="label",
                                             labels=["neg", "pos"])),
    ("f.conll", readers.read_conll),
    ("f.json", readers.read_squad),
    ("glue.tsv", lambda p: readers.read_glue(p, "sst2")),
])
def test_every_reader_names_the_line_of_a_byte_that_is_not_utf8(tmp_path, name, reader):
    text = {"f.csv": b"sentence,label\nthe cat,pos\nthe caf\xe9,neg\n",
            "f.tsv": b"sentence\tlabel\nthe cat\tpos\nthe caf\xe9\tneg\n",
            "f.jsonl": b'{"sentence": "a", "label": "pos"}\n\n{"sentence": "caf\xe9"}\n',
            "f.conll": b"the O\n\ncaf\xe9 O\n",
            "f.json": b'{"data": [\n {"paragraphs": []},\n {"title": "caf\xe9"}]}',
            "glue.tsv": b"sentence\tlabel\nthe cat\t1\ncaf\xe9\t0\n"}[name]
    path = _write(tmp_path, name, text)
    with pytest.raises(DataError) as e:
        reader(path)
    assert str(e.value).startswith(f"{path}:3: not UTF-8 text (byte 0xe9 at column ")
    assert "save the file as UTF-8" in str(e.value)


def test_a_csv_that_is_not_utf8_stops_the_command_naming_the_line(tmp_path):
    path = _write(tmp_path, "train.csv", b"sentence,label\nthe cat,pos\nthe caf\xe9,neg\n")
    _refused(tmp_path, "finetune", _custom(train=path),
             f"{path}:3: not UTF-8 text (byte 0xe9 at column 8")


def test_a_squad_file_that_is_not_utf8_stops_the_command_naming_the_line(tmp_path):
    with open(os.path.join(SQUAD, "dev-v1.1.json"), "rb") as f:
        text = json.dumps(json.loads(f.read()), indent=1).encode()
    at = text.index(b'"question"', len(text) // 2)
    path = _write(tmp_path, "dev.json", text[:at] + b"\xff" + text[at:])
    line = text.count(b"\n", 0, at) + 1
    _refused(tmp_path, "finetune", _squad(dev=path), f"{path}:{line}: not UTF-8 text (byte 0xff")


# ----------------------------------------------------------- 5. a split with no rows at all


@pytest.mark.parametrize("split", ["dev", "train", "test"])
def test_a_header_only_file_is_refused_before_anything_is_written(tmp_path, split):
    path = _write(tmp_path, f"{split}.csv", "sentence,label\n")
    _refused(tmp_path, "finetune", _custom(**{split: path}),
             f"{path}: holds no examples (a header or blank lines only); the {split} set "
             "needs at least one row")


# ------------------------------------------ 6. a pre-training workdir where a fine-tuning goes


def _fake_run(workdir: str, config: dict, step: int = 100) -> None:
    """A complete-looking checkpoint step (what bertjax.rundir reads) with ``config`` saved."""
    step_dir = os.path.join(workdir, "checkpoints", str(step))
    os.makedirs(os.path.join(step_dir, "state"))
    os.makedirs(os.path.join(step_dir, "config"))
    with open(os.path.join(step_dir, "state", "_METADATA"), "w") as f:
        f.write("{}")
    with open(os.path.join(step_dir, "config", "metadata"), "w") as f:
        json.dump(config, f)


def _pretraining_workdir(tmp_path) -> str:
    workdir = str(tmp_path / "pretrained")
    _fake_run(workdir, ckpt_lib.config_to_json(config_lib.base_config()))
    return workdir


def test_eval_only_on_a_pretraining_workdir_says_what_it_is(tmp_path):
    workdir = _pretraining_workdir(tmp_path)
    before = commands.checksums(workdir)
    result = commands.run("finetune", "--config=configs/glue.py:task=sst2", "--eval_only",
                          f"--workdir={workdir}")
    commands.assert_one_error(result, f"--workdir={workdir} is a pre-training run, not a "
                              "fine-tuning", f"--config.init_from={workdir} --workdir=NEW",
                              "--eval_only --workdir=NEW")
    assert commands.checksums(workdir) == before


def test_fine_tuning_into_a_pretraining_workdir_is_refused_even_with_overwrite(tmp_path):
    workdir = _pretraining_workdir(tmp_path)
    before = commands.checksums(workdir)
    result = commands.run("finetune", *_custom(), "--overwrite", f"--workdir={workdir}")
    commands.assert_one_error(result, "is a pre-training run, not a fine-tuning",
                              "--overwrite would delete its own", "give another --workdir")
    assert commands.checksums(workdir) == before  # its checkpoints are still there


def test_eval_only_on_an_import_says_what_it_is(tmp_path):
    from tests.finetuning.test_tagging import make_import

    workdir = make_import(str(tmp_path / "imported"))
    with open(os.path.join(workdir, rundir.MODEL_CONFIG), "w") as f:  # as bertjax.convert
        json.dump({"bertjax": {}}, f)  # writes it (the kind is read from its presence)
    before = commands.checksums(workdir)
    result = commands.run("finetune", "--config=configs/ner.py", "--eval_only",
                          f"--workdir={workdir}")
    commands.assert_one_error(result, "is an import (python -m bertjax.convert), not a "
                              "fine-tuning", f"--config.init_from={workdir}")
    assert commands.checksums(workdir) == before


# ---------------------------------------------- 7. eval_only reads files as the run was trained


def _finetuned_workdir(tmp_path, **data) -> str:
    """A fine-tuned workdir (its saved config only) of a custom task on review / verdict."""
    c = finetune_config("custom")
    c.tokenizer = os.path.join(FT, "vocab")
    c.model.update(preset="custom", num_layers=1, hidden_size=32, num_heads=2,
                   intermediate_size=64, vocab_size=64, max_position_embeddings=64)
    c.max_seq_length, c.global_batch_size, c.eval_batch_size = 16, 16, 8
    c.data.update(train=os.path.join(HERE, "files", "table", "reviews.csv"),
                  dev=os.path.join(HERE, "files", "table", "reviews.csv"), text_a="review",
                  label="verdict", labels="neg,pos", **data)
    workdir = str(tmp_path / "finetuned")
    _fake_run(workdir, ckpt_lib.config_to_json(c), step=60)
    return workdir


def test_eval_only_with_a_test_file_reads_dev_and_test_with_the_saved_columns(tmp_path):
    workdir = _finetuned_workdir(tmp_path)
    test = _write(tmp_path, "new.csv", "id,review\n1,a new review\n2,another one\n")
    command = finetune_config("custom")  # as --config=configs/glue.py:task=custom gives it
    command.data.test = test
    family = families.get(command, workdir, eval_only=True)
    plan = runner.settle(command, workdir, family, eval_only=True)
    d = plan.config.data
    assert (d.text_a, d.label, d.labels, d.dev, d.test) == (
        "review", "verdict", "neg,pos", os.path.join(HERE, "files", "table", "reviews.csv"), test)
    assert plan.evalsets["dev"].examples == 3 and plan.testset.examples == 2
    assert command.data.label == "label" and command.data.text_a == ""  # not changed
    # what the command line does set is its own
    command.data.text_a = "text"
    with pytest.raises(DataError, match=r"reviews.csv:1: column 'text' not found"):
        runner.settle(command, workdir, families.get(command, workdir, True), eval_only=True)


def test_take_saved_keeps_given_read_settings_and_takes_the_rest():
    saved = ckpt_lib.config_to_json(finetune_config("custom"))
    saved["data"].update(text_a="review", label="verdict", dev="d.csv", labels="neg,pos",
                         examples_per_row=4)
    command = finetune_config("custom")
    command.data.update(text_b="other", labels="a,b,c")
    out = run_settings.take_saved(command, rundir.upgrade(saved))
    assert (out.data.text_a, out.data.text_b, out.data.label, out.data.dev) == (
        "review", "other", "verdict", "d.csv")
    assert out.data.labels == "neg,pos"  # the head's classes are the trained ones
    assert out.data.examples_per_row == 1  # how to batch, not how to read: the command's
    ner = ckpt_lib.config_to_json(finetune_config("ner"))
    ner["data"].update(tag_column=2, word_column=1)
    command = finetune_config("ner")
    command.data.update(tag_column=-1, word_column=0)  # as configs/ner.py leaves them
    out = run_settings.take_saved(command, rundir.upgrade(ner))
    assert (out.data.word_column, out.data.tag_column) == (1, 2)


# --------------------------------------------------------- 8. a v1.1 answer without text


def test_a_v11_dev_answer_with_empty_text_is_refused(tmp_path):
    def empty(data):
        _first_qa(data)["answers"][0]["text"] = ""

    path = _squad_file(tmp_path, "dev.json", "dev-v1.1.json", empty)
    _refused(tmp_path, "finetune", _squad(dev=path),
             "question 'v1.1-2-0-0' has an answer with empty text ''",
             "SQuAD v1.1 answers need text")


# ------------------------------------------------- 9. the training speed of an evaluating run


class _Stub:
    """Any method, doing nothing and answering False (checkpointers, the metrics writer)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: False


def _timed_loop(monkeypatch, tmp_path, step_s: float, eval_s: float, steps: int = 6):
    """train_loop over stand-ins: a step and an evaluation that take the given seconds."""
    monkeypatch.setattr(runner.multihost, "global_batch", lambda local, shardings: local)

    def step_fn(state, batch):
        time.sleep(step_s)
        return state, {"loss": 1.0, "bad_streak": 0.0}

    def evaluate(params, name, split):
        time.sleep(eval_s)
        return None, {"accuracy": 0.5, "loss": 1.0, "examples": 2}

    config = ml_collections.ConfigDict(dict(
        total_steps=steps, eval_every=1, global_batch_size=2, log_every=1,
        max_nonfinite_steps=3, checkpoint_every=1000, seed=0))
    plan = types.SimpleNamespace(
        config=config, workdir=str(tmp_path), packing_plan=None, evalsets={"dev": None},
        family=types.SimpleNamespace(metric_names=("accuracy",),
                                     write_predictions=lambda *a: None),
        trainset=types.SimpleNamespace(rows=4, arrays={"input_ids": np.zeros((4, 3), np.int32)}))
    built = types.SimpleNamespace(
        state=types.SimpleNamespace(params=np.zeros(2)), step_fn=step_fn, batch_sh=None,
        evaluator=types.SimpleNamespace(evaluate=evaluate), ckpt=_Stub(), latest=_Stub(),
        start=0, best={"step": None, "accuracy": -np.inf})
    said = []
    speed = runner.train_loop(plan, built, _Stub(), said.append)
    return speed, said


def test_a_run_that_evaluates_every_step_reports_no_speed_not_billions(monkeypatch, tmp_path):
    speed, said = _timed_loop(monkeypatch, tmp_path, step_s=0.001, eval_s=0.05)
    assert speed == {}, speed  # was 4e9 steps/s: evaluation before the timed span subtracted
    assert any(line.startswith("training: no speed reported (5 timed steps") for line in said)


def test_a_run_with_measurable_training_reports_its_true_speed(monkeypatch, tmp_path):
    speed, said = _timed_loop(monkeypatch, tmp_path, step_s=0.03, eval_s=0.03)
    # 5 steps counted, the evaluations left out: at most 33 steps/s, or 42 here, where a step
    # runs when called (a device runs it after the call returns, inside the timed span)
    assert 10 < speed["train_steps_per_second"] < 45, speed
    assert speed["train_examples_per_second"] == pytest.approx(
        2 * speed["train_steps_per_second"])
    assert any(line.startswith("training: ") and "steps/s" in line for line in said)


def test_training_speed_needs_time_to_measure():
    assert runner.training_speed(5, 10, 0.001) == {}
    assert runner.training_speed(5, 10, -0.2) == {}
    assert runner.training_speed(0, 0, 1.0) == {}
    assert runner.training_speed(5, 10, 2.0) == {"train_steps_per_second": 2.5,
                                                 "train_examples_per_second": 5.0}


# --------------------------------------------------------------- 10. more bad inputs, one line


def test_a_missing_label_column_is_named_with_the_columns_present(tmp_path):  # pinned
    _refused(tmp_path, "finetune", _custom(label="sentiment"),
             "train.tsv:1: column 'sentiment' not found; columns present: ['sentence', "
             "'label']")


def test_an_unlabelled_dev_file_names_its_first_row(tmp_path):
    glue = os.path.join(HERE, "files", "glue", "MRPC")
    args = ["--config=configs/glue.py:task=mrpc", f"--config.tokenizer={os.path.join(FT, 'vocab')}",
            *TINY, "--config.max_seq_length=16", f"--config.data.train={glue}/train.tsv",
            f"--config.data.dev={glue}/test.tsv"]
    _refused(tmp_path, "finetune", args,
             f"{os.path.join(glue, 'test.tsv')}: row 0 has no label",
             "a test file goes to --config.data.test")


def test_a_missing_text_b_column_is_named(tmp_path):  # pinned
    _refused(tmp_path, "finetune", _custom(text_b="hypothesis"),
             "train.tsv:1: column 'hypothesis' not found")


def test_a_dev_label_outside_the_label_list_is_named(tmp_path):  # pinned
    path = _write(tmp_path, "dev.tsv", "sentence\tlabel\nthe cat\tpos\nthe dog\tmaybe\n")
    _refused(tmp_path, "finetune", _custom(dev=path),
             f"{path}:3: label 'maybe' is not one of the allowed labels ['neg', 'pos']")


@pytest.mark.parametrize("value,fragment", [("pos", "is not a number"),  # pinned
                                            ("nan", "is not a finite number")])
def test_a_regression_label_that_is_not_a_number_is_named(tmp_path, value, fragment):
    path = _write(tmp_path, "scores.tsv", f"sentence\tscore\nthe cat\t0.5\nthe dog\t{value}\n")
    _refused(tmp_path, "finetune", _custom(train=path, label="score", labels="",
                                           regression=True),
             f"{path}:3: label '{value}' {fragment}")


def test_a_jsonl_line_that_is_not_an_object_is_named(tmp_path):  # pinned
    path = _write(tmp_path, "train.jsonl", '{"sentence": "a", "label": "pos"}\n["b", "neg"]\n')
    _refused(tmp_path, "finetune", _custom(train=path),
             f"{path}:2: expected a JSON object per line, got list")


def test_a_squad_file_without_data_is_named(tmp_path):  # pinned
    path = _write(tmp_path, "train.json", '{"version": "1.1", "articles": []}')
    _refused(tmp_path, "finetune", _squad(train=path), f"{path}: no top-level 'data' list")


def test_a_v11_training_question_without_answers_is_named(tmp_path):  # pinned
    def no_answers(data):
        _first_qa(data)["answers"] = []

    path = _squad_file(tmp_path, "train.json", "train-v1.1.json", no_answers)
    _refused(tmp_path, "finetune", _squad(train=path),
             "question 'v1.1-1-0-0' has no answers and is not marked is_impossible")


def test_a_training_tag_missing_from_the_given_labels_is_named(tmp_path):  # pinned
    _refused(tmp_path, "finetune", _ner(labels="O,B-LOC,I-LOC"),
             "train.conll:", "tag 'B-PER' is not in the label set ['O', 'B-LOC', 'I-LOC']",
             "add it to --config.data.labels")


def test_an_unknown_task_without_files_is_named(tmp_path):  # pinned
    _refused(tmp_path, "finetune", ["--config=configs/glue.py:task=sst3"],
             "config.task='sst3': unknown GLUE task 'sst3'", "or 'custom'")


@pytest.mark.parametrize("flag,fragment", [
    ("--config.max_seq_length=4", "config.max_seq_length=4; expected at least 8"),  # pinned
    ("--config.eval_batch_size=6", "config.eval_batch_size=6 is not a positive multiple of the "
                                   "batch-parallel devices (8)"),  # pinned
    ("--config.num_epochs=0", "config.num_epochs=0.0; expected more than 0 passes"),
    ("--config.total_steps=-5", "config.total_steps=-5; expected a positive number of steps"),
])
def test_settings_that_cannot_train_are_named(tmp_path, flag, fragment):
    _refused(tmp_path, "finetune", _custom(flag), fragment)


def test_glue_without_its_directory_is_one_line(tmp_path):  # pinned
    _refused(tmp_path, "glue", [f"--glue_dir={tmp_path / 'nope'}",
                                f"--config.tokenizer={os.path.join(FT, 'vocab')}"],
             f"--glue_dir='{tmp_path / 'nope'}' is not a directory")


def test_glue_with_a_task_listed_twice_is_one_line(tmp_path):
    _refused(tmp_path, "glue", [f"--glue_dir={os.path.join(HERE, 'files', 'glue')}",
                                "--tasks=sst2,cola,SST-2"],
             "--tasks=sst2,cola,SST-2: sst2 is listed twice ('sst2' and 'SST-2')",
             "list each task once")


def test_glue_with_a_header_only_file_stops_before_any_task_runs(tmp_path):
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    (glue / "train.tsv").write_text("sentence\tlabel\nthe cat\t1\n")
    (glue / "dev.tsv").write_text("sentence\tlabel\n")
    _refused(tmp_path, "glue", [f"--glue_dir={tmp_path / 'glue'}", "--tasks=sst2",
                                f"--config.tokenizer={os.path.join(FT, 'vocab')}"],
             f"{glue / 'dev.tsv'}: holds no examples", "sst2 needs at least one row")
