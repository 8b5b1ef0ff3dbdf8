"""The GLUE leaderboard submission (bertjax.finetuning.glue_suite.build_submission, written by
python -m bertjax.glue): WORKDIR/submission/ and WORKDIR/glue_submission.zip as the GLUE server
takes them.

The quick tests build it from hand-written predictions over the small GLUE test files in
tests/finetuning/files/glue/ (every task's test file in its real column layout, MNLI's matched and
mismatched ones, diagnostic/diagnostic.tsv); the slow one runs the suite on a fake GLUE
directory with MNLI (tests/finetuning/test_glue_suite.py) and reruns it.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile

import pytest

from bertjax.data import tasks as readers
from bertjax.data.errors import DataError
from bertjax.data.glue import GLUE_SUBMISSION
from bertjax.finetuning import glue_suite
from test_finetune import imported  # noqa: F401  (module fixture: the tiny imported workdir)
from test_glue_suite import fake_glue, tiny_config

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = os.path.join(HERE, "files", "glue")
NAMES = ["CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv", "MNLI-mm.tsv",
         "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv"]  # the server's names, in its order
NLI3 = {"entailment", "neutral", "contradiction"}
VOCAB = {"CoLA.tsv": {"0", "1"}, "SST-2.tsv": {"0", "1"}, "MRPC.tsv": {"0", "1"},
         "QQP.tsv": {"0", "1"}, "WNLI.tsv": {"0", "1"}, "MNLI-m.tsv": NLI3, "MNLI-mm.tsv": NLI3,
         "AX.tsv": NLI3, "QNLI.tsv": {"entailment", "not_entailment"},
         "RTE.tsv": {"entailment", "not_entailment"}}
TEST_FILES = {"CoLA.tsv": "CoLA/test.tsv", "SST-2.tsv": "SST-2/test.tsv",
              "MRPC.tsv": "MRPC/test.tsv", "STS-B.tsv": "STS-B/test.tsv", "QQP.tsv": "QQP/test.tsv",
              "MNLI-m.tsv": "MNLI/test_matched.tsv", "MNLI-mm.tsv": "MNLI/test_mismatched.tsv",
              "QNLI.tsv": "QNLI/test.tsv", "RTE.tsv": "RTE/test.tsv", "WNLI.tsv": "WNLI/test.tsv",
              "AX.tsv": "diagnostic/diagnostic.tsv"}


def _glue(tmp_path) -> str:
    glue = str(tmp_path / "glue")
    shutil.copytree(FILES, glue)
    return glue


def _index_column(path: str) -> list[str]:
    """The test file's index (QQP: id) column, read plainly, one per data line."""
    lines = [line for line in open(path, encoding="utf-8").read().split("\n") if line]
    header = lines[0].split("\t")
    at = header.index("index") if "index" in header else header.index("id")
    return [line.split("\t")[at] for line in lines[1:]]


def _predict(glue: str, workdir: str, names=NAMES) -> None:
    """Predictions files as the task runs write them (the row's position as index), cycling
    through each file's labels; STS-B's go past both ends of [0, 5]."""
    for sub in GLUE_SUBMISSION:
        if sub.name not in names:
            continue
        n = len(_index_column(os.path.join(glue, TEST_FILES[sub.name])))
        vocab = sorted(VOCAB.get(sub.name, ())) or ["-0.25", "5.5", "2.125"]
        directory = os.path.join(workdir, sub.task, "predictions")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{sub.prediction}.tsv"), "w") as f:
            f.write("index\tprediction\n" + "".join(f"{i}\t{vocab[i % len(vocab)]}\n"
                                                    for i in range(n)))


def _members(path: str) -> dict[str, str]:
    with zipfile.ZipFile(path) as z:
        return {info.filename: z.read(info).decode("utf-8") for info in z.infolist()}


def test_the_zip_holds_the_servers_eleven_files_in_its_format(tmp_path):
    glue, workdir = _glue(tmp_path), str(tmp_path / "runs")
    rte = os.path.join(glue, "RTE", "test.tsv")  # indices that are not row positions: the
    text = open(rte).read().replace("\n0\t", "\n7\t").replace("\n1\t", "\n9\t")  # submission
    open(rte, "w").write(text)  # takes each row's index from the test file
    _predict(glue, workdir)
    info = glue_suite.build_submission(glue, workdir, list(glue_suite.GLUE_DIRS))
    archive = os.path.join(workdir, "glue_submission.zip")
    assert info["zip"] == archive and info["complete"] and info["missing"] == {}
    with zipfile.ZipFile(archive) as z:
        assert z.namelist() == NAMES  # top level, no folders, the server's names
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert z.testzip() is None
    members = _members(archive)
    for name, text in members.items():
        lines = text.split("\n")
        assert lines[0] == "index\tprediction" and lines[-1] == "", name
        rows = [line.split("\t") for line in lines[1:-1]]
        index = _index_column(os.path.join(glue, TEST_FILES[name]))
        assert [r[0] for r in rows] == index, name  # every test row, in order, with its index
        assert info["files"][name]["rows"] == len(index)
        values = [r[1] for r in rows]
        if name == "STS-B.tsv":
            assert values == ["0.000000", "5.000000"]  # clipped to the scores' [0, 5]
        else:
            assert set(values) <= VOCAB[name] and len(set(values)) == min(len(rows),
                                                                          len(VOCAB[name]))
        # the same bytes in WORKDIR/submission/
        assert open(os.path.join(workdir, "submission", name)).read() == text
    assert [r[0] for r in (line.split("\t") for line in members["RTE.tsv"].split("\n")[1:-1])
            ] == ["7", "9"]
    assert info["files"]["AX.tsv"] == {"task": "mnli", "rows": 3,
                                       "predictions": os.path.join("mnli", "predictions",
                                                                   "ax.tsv")}
    # Built again (the predictions' times changed, nothing else): the same bytes.
    before = open(archive, "rb").read()
    for sub in GLUE_SUBMISSION:
        os.utime(os.path.join(workdir, sub.task, "predictions", f"{sub.prediction}.tsv"),
                 (1e9, 1e9))
    glue_suite.build_submission(glue, workdir, list(glue_suite.GLUE_DIRS))
    assert open(archive, "rb").read() == before
    assert not [n for n in os.listdir(workdir) if n.endswith(".tmp")]


def test_missing_files_are_named_and_filled_only_when_asked(tmp_path):
    glue, workdir = _glue(tmp_path), str(tmp_path / "runs")
    _predict(glue, workdir, ["SST-2.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"])
    reasons = {"cola": "cola skipped: CoLA/train.tsv not found"}
    info = glue_suite.build_submission(glue, workdir, ["sst2", "mnli"], reasons=reasons)
    archive = os.path.join(workdir, "glue_submission.zip")
    assert list(_members(archive)) == ["SST-2.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"]
    assert not info["complete"] and sorted(info["missing"]) == sorted(
        set(NAMES) - {"SST-2.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"})
    assert info["missing"]["CoLA.tsv"] == "cola skipped: CoLA/train.tsv not found"
    assert info["missing"]["QQP.tsv"] == "qqp was not run"
    lines = glue_suite.submission_lines(info)
    assert lines[0].startswith(f"submission: {archive} (4 of the 11 files")
    assert any(line.startswith("warning: the GLUE server refuses a submission without all 11 "
                               "files; missing CoLA.tsv (cola skipped: ") for line in lines)
    assert any("--fill_missing" in line for line in lines)

    # Without the diagnostic file AX has no test set: its file goes, and from submission/ too.
    os.remove(os.path.join(glue, "diagnostic", "diagnostic.tsv"))
    info = glue_suite.build_submission(glue, workdir, ["sst2", "mnli"])
    assert "AX.tsv" not in _members(archive)
    assert info["missing"]["AX.tsv"].startswith("no test file: ") and info["missing"][
        "AX.tsv"].endswith(f"{os.path.join(glue, 'AX.tsv')} not found")
    assert not os.path.exists(os.path.join(workdir, "submission", "AX.tsv"))

    # --fill_missing: a task with its test and training files gets its training majority.
    info = glue_suite.build_submission(glue, workdir, ["sst2", "mnli"], fill_missing=True)
    members = _members(archive)
    mrpc = members["MRPC.tsv"].split("\n")  # MRPC/train.tsv: labels 1, 0, 1
    assert mrpc[0] == "index\tprediction" and mrpc[1:] == ["0\t1", "1\t1", ""]
    qqp = members["QQP.tsv"].split("\n")  # QQP/train.tsv: 0 and 1 once each: the first label
    assert qqp[1:] == ["0\t0", "1\t0", "2\t0", ""]
    assert info["files"]["MRPC.tsv"]["filled"] == (
        f"1 (the majority class of {os.path.join('MRPC', 'train.tsv')})")
    assert info["missing"]["CoLA.tsv"].endswith("; no training file to fill it from")
    assert any(line.startswith("submission: filled with a constant (scores at chance): MRPC.tsv, "
                               "QQP.tsv") for line in glue_suite.submission_lines(info))
    assert not any("pass --fill_missing" in line for line in glue_suite.submission_lines(info))
    summary = {"init_from": None, "tasks": [], "average": None, "skipped": {},
               "submission": info}
    md = glue_suite.write_summary(workdir, summary)
    assert "## GLUE submission" in md and "**incomplete**" in md
    assert "| MRPC.tsv | mrpc | 2 | filled: 1 (the majority class of" in md
    # Nothing to submit: no zip, and none left from before.
    info = glue_suite.build_submission(glue, workdir, [])
    assert info["zip"] is None and not os.path.exists(archive)
    assert os.listdir(os.path.join(workdir, "submission")) == []
    assert glue_suite.submission_lines(info)[0] == "submission: none written (no file)"


def test_predictions_that_do_not_fit_the_test_file_stop_with_one_line(tmp_path):
    glue, workdir = _glue(tmp_path), str(tmp_path / "runs")
    _predict(glue, workdir, ["RTE.tsv"])
    path = os.path.join(workdir, "rte", "predictions", "test.tsv")
    with open(path, "a") as f:
        f.write("2\tentailment\n")
    with pytest.raises(DataError, match=r"test.tsv: 3 predictions, but .*RTE.test.tsv has 2 rows"):
        glue_suite.build_submission(glue, workdir, ["rte"])
    with open(path, "w") as f:
        f.write("index\tprediction\n0\tentailment\n1\tneutral\n")
    with pytest.raises(DataError, match=r"prediction 'neutral' is not one of the rte labels"):
        glue_suite.build_submission(glue, workdir, ["rte"])


def test_test_files_give_their_index_and_every_row(tmp_path):
    # AX (diagnostic.tsv: index, sentence1, sentence2) is read by the MNLI reader
    diagnostic = os.path.join(FILES, "diagnostic", "diagnostic.tsv")
    rows = readers.read_glue(diagnostic, "mnli")
    assert [r["guid"] for r in rows] == ["0", "1", "2"] and rows[1]["label"] is None
    assert rows[0]["text_a"] == "The cat sat on the mat." and rows[0]["text_b"].startswith(
        "The cat did not")
    assert glue_suite.row_indices(os.path.join(FILES, "QQP", "test.tsv"), "qqp") == ["0", "1", "2"]
    assert glue_suite.row_indices(os.path.join(FILES, "MNLI", "test_mismatched.tsv"),
                               "mnli") == ["0", "1"]
    # QQP's reader skips short rows (its train.tsv has some): a test row must not be skipped
    short = tmp_path / "test.tsv"
    short.write_text("id\tquestion1\tquestion2\n0\ta?\tb?\n1\tonly one question?\n")
    with pytest.raises(DataError, match="1 of its 2 rows have too few tab-separated fields"):
        glue_suite.row_indices(str(short), "qqp")
    short.write_text("sentence\n")
    with pytest.raises(DataError, match="holds no examples"):
        glue_suite.row_indices(str(short), "sst2")


def test_a_test_file_that_cannot_be_submitted_stops_the_suite_before_it_trains(tmp_path):
    glue, workdir = tmp_path / "glue", tmp_path / "runs"
    (glue / "SST-2").mkdir(parents=True)
    (glue / "SST-2" / "train.tsv").write_text("sentence\tlabel\nthe cat\t1\n")
    (glue / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nthe dog\t0\n")
    (glue / "SST-2" / "test.tsv").write_text("sentence\nthe bird\n")  # no index column
    with pytest.raises(DataError, match=r"test.tsv: no 'index' \(or 'id'\) column"):
        glue_suite.run_suite(tiny_config(), str(glue), str(workdir), ["sst2"])
    assert not workdir.exists()
    # without test predictions there is no submission, and the file is not read
    with pytest.raises(Exception, match="no encoder"):
        glue_suite.run_suite(tiny_config(), str(glue), str(workdir), ["sst2"],
                             predict_test=False)


@pytest.mark.slow
def test_the_suite_writes_the_submission_and_a_rerun_rebuilds_it(imported, tmp_path, capsys):
    glue, workdir = str(tmp_path / "glue"), str(tmp_path / "runs")
    fake_glue(glue, mnli=True)  # SST-2 with test.tsv; MNLI with both test sets; diagnostic.tsv
    tasks = glue_suite.parse_tasks("sst2,mnli")
    summary = glue_suite.run_suite(tiny_config(), glue, workdir, tasks, imported)
    out = capsys.readouterr().out
    archive = os.path.join(workdir, "glue_submission.zip")
    members = _members(archive)
    assert list(members) == ["SST-2.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"]
    for name, test in (("SST-2.tsv", "SST-2/test.tsv"), ("MNLI-m.tsv", "MNLI/test_matched.tsv"),
                       ("MNLI-mm.tsv", "MNLI/test_mismatched.tsv"),
                       ("AX.tsv", "diagnostic/diagnostic.tsv")):
        lines = members[name].split("\n")
        index = _index_column(os.path.join(glue, test))
        assert lines[0] == "index\tprediction" and [x.split("\t")[0] for x in lines[1:-1]] == index
        assert {x.split("\t")[1] for x in lines[1:-1]} <= VOCAB[name]
    assert len(index) == 6  # the diagnostic set, by the MNLI model
    assert sorted(os.listdir(os.path.join(workdir, "mnli", "predictions"))) == [
        "ax.tsv", "dev.tsv", "dev_mismatched.tsv", "test.tsv", "test_mismatched.tsv"]
    assert "[mnli] predicting" in out and f"submission: {archive} (4 of the 11 files" in out
    assert "warning: the GLUE server refuses a submission without all 11 files" in out
    assert summary["submission"]["missing"]["QQP.tsv"] == "qqp not in --tasks"
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f)["submission"]["files"]["AX.tsv"]["rows"] == 6
    before = open(archive, "rb").read()

    # A rerun: nothing trained or predicted, the same zip, byte for byte.
    glue_suite.run_suite(tiny_config(), glue, workdir, tasks, imported)
    out = capsys.readouterr().out
    assert "step " not in out and "predicting" not in out
    assert open(archive, "rb").read() == before
    # A finished MNLI without its AX predictions (say, from before the diagnostic file was
    # there) predicts just those with its kept checkpoint: the same predictions again.
    os.remove(os.path.join(workdir, "mnli", "predictions", "ax.tsv"))
    glue_suite.run_suite(tiny_config(), glue, workdir, tasks, imported)
    out = capsys.readouterr().out
    assert "step 12/12" not in out and "[mnli] predicting" in out and "test_matched" not in out
    assert open(archive, "rb").read() == before
