"""Every GLUE task from one command: find the files, fine-tune each task, one summary table.

The suite, in phases (``run_suite``):

  1. find    each task's files in the usual GLUE layout (``GLUE_DIRS``: CoLA/, SST-2/, MRPC/,
             STS-B/, QQP/, MNLI/, QNLI/, RTE/, WNLI/, each with train.tsv, dev.tsv and an
             optional test.tsv; MNLI's dev is dev_matched.tsv); a task without its train or dev
             file is skipped with a line saying so, and none found at all is an error;
  2. check   before anything is compiled: the encoder (``init_from``), its tokenizer and
             sizes, the mesh and batch sizes, every row of every file to be used, and whether
             each task's workdir holds a finished run of the same encoder;
  3. run     ``classify.run`` per task in ``WORKDIR/<task>``; a task whose workdir already
             holds its metrics.json is not rerun (the suite resumes) unless ``overwrite``; an
             interrupted one (checkpoints, no metrics.json) starts again;
  4. report  a table (task, metrics, dev scores, steps, seconds) printed and written to
             WORKDIR/summary.md and summary.json after every task, with the GLUE-style
             average: each task scores the mean of its metrics (MRPC and QQP (F1 + accuracy)
             / 2, STS-B (Pearson + Spearman) / 2, CoLA Matthews correlation, MNLI the matched
             accuracy), and the average is the mean of those scores over the tasks run;
  5. submit  (``predict_test``) the leaderboard submission: WORKDIR/submission/ and
             WORKDIR/glue_submission.zip (``build_submission``).

The same config (configs/glue.py with the command line's overrides) fine-tunes every task; only
``task`` and the data files change. TensorFlow is not imported here.

The submission (gluebenchmark.com/submit) is what the GLUE server takes, as its authors' toolkit
(nyu-mll/jiant, scripts/postproc/glue_submission_formatter.py) writes it: one zip whose top
level holds one TSV per test set with fixed names (bertjax.data.glue.GLUE_SUBMISSION: CoLA.tsv,
SST-2.tsv, MRPC.tsv, STS-B.tsv, QQP.tsv, MNLI-m.tsv, MNLI-mm.tsv, QNLI.tsv, RTE.tsv, WNLI.tsv,
AX.tsv), each a header ``index<TAB>prediction`` then one row per example of the test file, in
its order, with its ``index`` (QQP: ``id``) column; predictions are label strings as in the
training files ("0"/"1" for CoLA, SST-2, MRPC, QQP, WNLI; entailment/neutral/contradiction for
MNLI and AX; entailment/not_entailment for QNLI and RTE), STS-B a score, clipped here to the
labels' [0, 5]. The MNLI model predicts MNLI-m (MNLI/test_matched.tsv), MNLI-mm
(MNLI/test_mismatched.tsv) and AX, the diagnostic set (diagnostic/diagnostic.tsv in
download_glue_data.py's layout; it has no training data). The task runs write
predictions/test.tsv (index: the row's position); the suite predicts MNLI's two other test sets
with the kept checkpoint into predictions/test_mismatched.tsv and predictions/ax.tsv, and the
submission takes each row's index from the test file itself. Every row of every test file must
be readable (one prediction each), or the suite stops before it trains.

The server refuses a zip that lacks any of the 11 files (and an empty file; keras-team/keras-hub,
examples/glue_benchmark/README.md). A task this suite did not run (not in --tasks, skipped,
or without its test file) gets no file: the zip is written with what there is, and the summary
and the command's output name the missing files and say the server will refuse it. With
``fill_missing`` (``--fill_missing``) a missing file whose test and training files are in the
GLUE directory is filled with the training file's majority class (STS-B: its mean score):
people who submit a subset of tasks fill the others with something (keras-hub's README copies
the server's sample submission's files); these score at chance, and the summary lists them as
filled. It is opt-in so that no constant file is ever submitted unasked.
"""

from __future__ import annotations

import collections
import copy
import io
import dataclasses
import json
import math
import os
import zipfile
from typing import Any, Sequence

from bertjax import config as config_lib
from bertjax import console
from bertjax import lock
from bertjax import multihost
from bertjax import progress
from bertjax import rundir
from bertjax.data import fs
from bertjax.data import tasks as readers
from bertjax.data.errors import DataError
from bertjax.data.glue import GLUE_SUBMISSION, STSB_RANGE, SubmissionFile, glue_task
from bertjax.finetuning import classify
from bertjax.finetuning import encoder
from bertjax.finetuning import features

# Task -> its directory in the GLUE download, in the GLUE paper's order.
GLUE_DIRS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
             "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
_SHORT = {"accuracy": "acc", "f1": "F1", "mcc": "MCC", "pearson": "Pearson",
          "spearman": "Spearman"}
SUBMISSION_DIR = "submission"  # WORKDIR/submission/: the zip's files, to read or check
SUBMISSION_ZIP = "glue_submission.zip"  # WORKDIR/glue_submission.zip: the file to upload
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # every member's date (zip's earliest): the same zip each time


@dataclasses.dataclass(frozen=True)
class TaskFiles:
    """One task's files ("" where absent)."""

    task: str
    train: str
    dev: str
    test: str = ""
    dev_mismatched: str = ""  # MNLI only


def parse_tasks(text: str) -> list[str]:
    """"cola,sst2" -> ["cola", "sst2"] (GLUE spellings such as SST-2 accepted); "" -> all.
    An unknown or repeated task is a ConfigError."""
    if not text.strip():
        return list(GLUE_DIRS)
    out, given = [], {}
    for name in (t.strip() for t in text.split(",") if t.strip()):
        key = name.lower().replace("-", "")
        if key not in GLUE_DIRS:
            raise config_lib.ConfigError(f"--tasks: {name!r} is not a GLUE task; expected a "
                                         f"comma-separated subset of {','.join(GLUE_DIRS)}")
        if key in given:  # a task twice is a slip (perhaps for another task): say so
            raise config_lib.ConfigError(f"--tasks={text}: {key} is listed twice ({given[key]!r} "
                                         f"and {name!r}); list each task once")
        given[key] = name
        out.append(key)
    return out


def find_files(glue_dir: str, task: str) -> TaskFiles | str:
    """The task's files under ``glue_dir``, or the reason it cannot run (a missing file)."""
    spec = glue_task(task)
    root = os.path.join(glue_dir, GLUE_DIRS[task])
    train, dev = os.path.join(root, "train.tsv"), os.path.join(root, spec.dev_files[0])
    for path in (train, dev):
        if not fs.is_file(path):
            return f"{path} not found"
    test = os.path.join(root, spec.test_files[0])
    mismatched = os.path.join(root, spec.dev_files[1]) if len(spec.dev_files) > 1 else ""
    return TaskFiles(task, train, dev, test if fs.is_file(test) else "",
                     mismatched if mismatched and fs.is_file(mismatched) else "")


def task_config(base: Any, files: TaskFiles, init_from: str, predict_test: bool) -> Any:
    """``base`` (the command line's config) for one task: its name and files, nothing else."""
    c = copy.deepcopy(base)
    with c.unlocked():
        c.task = files.task
        c.init_from = init_from
        c.data.train, c.data.dev = files.train, files.dev
        c.data.test = files.test if predict_test else ""
        if files.dev_mismatched and "dev_mismatched" in c.data:  # the runner scores it too
            c.data.dev_mismatched = files.dev_mismatched
    return c


def task_score(dev: dict[str, float], names: Sequence[str]) -> float:
    """The GLUE leaderboard's per-task score: the unweighted mean of the task's metrics."""
    values = [float(dev[n]) for n in names]
    return sum(values) / len(values)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None  # JSON has no nan


def _same_path(a: str | None, b: str | None) -> bool:
    norm = (lambda p: fs.real(p) if p else "")
    return norm(a) == norm(b)


def summarize(results: dict[str, dict], skipped: dict[str, str],
              init_from: str) -> dict[str, Any]:
    """The summary (summary.json) from each task's metrics.json contents.

    Args:
      results: task -> what classify.run returned / wrote to metrics.json, in suite order.
      skipped: task -> why it did not run.
      init_from: the encoder every task started from.
    """
    rows = []
    for task, r in results.items():
        names = glue_task(task).metrics
        score = task_score(r["dev"], names)
        row = {"task": task, "metrics": list(names),
               "dev": {n: _finite(float(r["dev"][n])) for n in names},
               "score": _finite(score), "steps": r.get("steps"), "seconds": r.get("seconds"),
               "best_step": r.get("best_step")}
        if isinstance(r.get("dev_mismatched"), dict):  # MNLI: shown, not in the score
            row["dev_mismatched"] = {n: _finite(float(r["dev_mismatched"][n])) for n in names}
        rows.append(row)
    scores = [row["score"] for row in rows]
    average = (None if not rows or any(s is None for s in scores)
               else sum(scores) / len(scores))  # a nan task makes the average undefined
    return {"init_from": init_from or None, "tasks": rows, "average": average,
            "average_over": [row["task"] for row in rows], "skipped": skipped}


def table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (scores x 100, as GLUE reports them)."""
    pct = (lambda v: "nan" if v is None else f"{100 * v:.1f}")
    lines = ["| task | metric(s) | dev | score | steps | seconds |",
             "|---|---|---|---|---:|---:|"]
    for row in summary["tasks"]:
        names = "/".join(_SHORT[n] for n in row["metrics"])
        dev = "/".join(pct(row["dev"][n]) for n in row["metrics"])
        if "dev_mismatched" in row:
            names += " (m/mm)"
            dev += "/" + "/".join(pct(row["dev_mismatched"][n]) for n in row["metrics"])
        secs = "" if row["seconds"] is None else f"{row['seconds']:.0f}"
        lines.append(f"| {row['task']} | {names} | {dev} | {pct(row['score'])} | "
                     f"{row['steps']} | {secs} |")
    n = len(summary["tasks"])
    lines.append(f"| **average** ({n} task{'s' if n != 1 else ''}) | GLUE-style | | "
                 f"**{pct(summary['average'])}** | | |")
    return "\n".join(lines)


def write_summary(workdir: str, summary: dict[str, Any]) -> str:
    """summary.json and summary.md in ``workdir`` (each through a temporary file)."""
    skipped = "".join(f"\n- {t}: skipped, {why}" for t, why in summary["skipped"].items())
    md = (f"# GLUE dev results\n\nEncoder: {summary['init_from'] or 'random init'}\n\n"
          f"{table(summary)}\n{skipped}\n")
    if summary.get("submission"):
        md += "\n" + submission_table(summary["submission"]) + "\n"
    for name, text in (("summary.json", json.dumps(summary, indent=2)), ("summary.md", md)):
        fs.write_atomic(os.path.join(workdir, name), text)
    return md


# ------------------------------------------------------------------------------- submission


def submission_files(task: str) -> list[SubmissionFile]:
    """The submission files the task's model predicts (MNLI: MNLI-m, MNLI-mm and AX)."""
    return [s for s in GLUE_SUBMISSION if s.task == task]


def submission_test_file(glue_dir: str, sub: SubmissionFile) -> str:
    """The first of the file's test files that is in ``glue_dir``, or ""."""
    for rel in sub.test_files:
        path = os.path.join(glue_dir, *rel.split("/"))
        if fs.is_file(path):
            return path
    return ""


def row_indices(path: str, task: str) -> list[str]:
    """The index (QQP: id) of each row of a GLUE test file, in order: the rows the server wants
    predicted. Raises DataError (one line) for a file without rows or without an index column,
    or with a row the task's reader cannot read (it would get no prediction)."""
    rows = readers.read_glue(path, task)
    lines = readers.read_text(path).split("\n")
    header = lines[0].rstrip("\r").split("\t")
    if not rows:
        raise DataError(f"{path}: holds no examples (a header or blank lines only); {task} "
                        "needs at least one row in each of its files")
    if "index" not in header and "id" not in header:
        raise DataError(f"{path}: no 'index' (or 'id') column (columns: {header}); the GLUE "
                        "submission numbers each test row by it, as the GLUE test files do")
    count = sum(1 for line in lines[1:] if line.rstrip("\r"))
    if count != len(rows):
        raise DataError(f"{path}: {count - len(rows)} of its {count} rows have too few "
                        "tab-separated fields to be read, and the GLUE server wants a "
                        "prediction for every row; repair them")
    return [r["guid"] for r in rows]


def _predictions(path: str) -> list[str] | None:
    """The prediction column of a predictions/NAME.tsv, or None when it is absent or not one."""
    if not fs.is_file(path):
        return None
    lines = fs.path(path).read_text().split("\n")
    if lines[0] != "index\tprediction":
        return None
    return [line.split("\t", 1)[-1] for line in lines[1:] if line]


def _submitted(value: str, task: str, where: str) -> str:
    """One prediction as the server takes it: a label string of the task, or for STS-B a score
    clipped to [0, 5]."""
    spec = glue_task(task)
    if spec.is_regression:
        try:
            x = float(value)
        except ValueError:
            x = math.nan
        if not math.isfinite(x):
            raise DataError(f"{where}: prediction {value!r} is not a finite number")
        lo, hi = STSB_RANGE
        return f"{min(max(x, lo), hi) + 0.0:.6f}"  # + 0.0: no "-0.000000"
    if value not in spec.labels:
        raise DataError(f"{where}: prediction {value!r} is not one of the {task} labels "
                        f"{list(spec.labels)}")
    return value


def majority(glue_dir: str, task: str) -> tuple[str, str] | None:
    """(prediction, how it was found) for filling a task's submission file: the majority class
    of its training file (ties: the first label), for STS-B its mean score; None without one."""
    train = os.path.join(glue_dir, GLUE_DIRS[task], "train.tsv")
    if not fs.is_file(train):
        return None
    labels = [r["label"] for r in readers.read_glue(train, task)]
    if not labels:
        return None
    spec = glue_task(task)
    rel = os.path.join(GLUE_DIRS[task], "train.tsv")
    if spec.is_regression:
        mean = sum(labels) / len(labels)
        return f"{mean:.6f}", f"the mean score of {rel}"
    counts = collections.Counter(labels)
    best = max(sorted(counts), key=lambda k: counts[k])  # the first of equally common ones
    return spec.labels[best], f"the majority class of {rel}"


def _zip_bytes(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A zip of ``members`` (name, contents) at its top level, the same bytes for the same
    members: fixed dates and permissions, deflated, in the given order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, whatever the host: its permissions below
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
    return buffer.getvalue()


def build_submission(glue_dir: str, workdir: str, tasks: Sequence[str],
                     fill_missing: bool = False, reasons: dict[str, str] | None = None,
                     ids: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Writes the GLUE leaderboard submission: WORKDIR/submission/<file> for each file of
    ``GLUE_SUBMISSION`` there is, and WORKDIR/glue_submission.zip holding them (each through a
    temporary file; files of an earlier build that are not made again are removed).

    Args:
      glue_dir: the GLUE download: the test files give each row's index.
      workdir: the suite's workdir; task T's predictions are T/predictions/<name>.tsv.
      tasks: the tasks whose predictions go in (those the suite ran or found finished).
      fill_missing: fill a file of a task not in ``tasks`` with ``majority`` where its test and
        training files are in ``glue_dir``.
      reasons: task -> why it is not in ``tasks``, for the missing files' notes.
      ids: test file path -> ``row_indices`` already read.

    Returns:
      {"zip": its path, or None when there is no file, "directory", "complete": all 11 files,
      "files": {name: {"task", "rows", and "predictions" (the file, relative to workdir) or
      "filled" (the prediction and how it was found)}}, "missing": {name: why},
      "fill_missing"}.

    Raises:
      DataError: a predictions file that is absent, or is not one row per test row, or holds a
        prediction that is not a label of the task (STS-B: not a number).
    """
    reasons, ids = reasons or {}, dict(ids or {})
    files: dict[str, dict] = {}
    missing: dict[str, str] = {}
    members: list[tuple[str, bytes]] = []
    for sub in GLUE_SUBMISSION:
        test = submission_test_file(glue_dir, sub)
        places = " or ".join(os.path.join(glue_dir, *r.split("/")) for r in sub.test_files)
        filled = None
        if sub.task not in tasks:
            filled = majority(glue_dir, sub.task) if fill_missing and test else None
            if filled is None:
                why = reasons.get(sub.task, f"{sub.task} was not run")
                if fill_missing:
                    why += ("; no training file to fill it from" if test else
                            f"; no test file to fill: {places} not found")
                missing[sub.name] = why
                continue
        elif not test:
            missing[sub.name] = f"no test file: {places} not found"
            continue
        if test not in ids:
            ids[test] = row_indices(test, sub.task)
        index = ids[test]
        if filled is not None:
            values, where = [filled[0]] * len(index), f"{sub.name} (filled)"
            files[sub.name] = {"task": sub.task, "rows": len(index),
                               "filled": f"{filled[0]} ({filled[1]})"}
        else:
            where = os.path.join(workdir, sub.task, "predictions", f"{sub.prediction}.tsv")
            values = _predictions(where)
            if values is None or len(values) != len(index):
                got = ("absent or without its header" if values is None
                       else f"{len(values)} predictions")
                raise DataError(f"{where}: {got}, but {test} has {len(index)} rows; rerun the "
                                f"suite with --overwrite --tasks={sub.task}")
            files[sub.name] = {"task": sub.task, "rows": len(index),
                               "predictions": os.path.relpath(where, workdir)}
        body = "".join(f"{i}\t{_submitted(v, sub.task, where)}\n"
                       for i, v in zip(index, values))
        members.append((sub.name, ("index\tprediction\n" + body).encode("utf-8")))
    directory = os.path.join(workdir, SUBMISSION_DIR)
    if members:
        fs.path(directory).mkdir(parents=True, exist_ok=True)
    made = dict(members)
    for sub in GLUE_SUBMISSION:
        path = os.path.join(directory, sub.name)
        if sub.name in made:
            fs.write_atomic(path, made[sub.name])
        else:  # from an earlier build: not part of this one
            fs.path(path).unlink(missing_ok=True)
    archive = os.path.join(workdir, SUBMISSION_ZIP)
    if members:
        fs.write_atomic(archive, _zip_bytes(members))
    else:
        fs.path(archive).unlink(missing_ok=True)
    return {"zip": archive if members else None, "directory": directory,
            "complete": not missing, "files": files, "missing": missing,
            "fill_missing": fill_missing}


def submission_lines(info: dict[str, Any]) -> list[str]:
    """What the command prints about the submission."""
    n, total = len(info["files"]), len(GLUE_SUBMISSION)
    filled = [name for name, f in info["files"].items() if "filled" in f]
    lines = [f"submission: {info['zip']} ({n} of the {total} files; also in "
             f"{info['directory']})" if info["zip"] else "submission: none written (no file)"]
    if filled:
        lines.append(f"submission: filled with a constant (scores at chance): "
                     f"{', '.join(filled)}")
    if info["missing"]:
        lines.append(f"warning: the GLUE server refuses a submission without all {total} files; "
                     "missing " + ", ".join(f"{name} ({why})"
                                            for name, why in info["missing"].items()))
        lines.append("warning: run those tasks (with their test files in --glue_dir)" + (
            "" if info.get("fill_missing") else ", or pass --fill_missing to fill each task "
            "whose test and training files are there with its majority class"))
    return lines


def submission_table(info: dict[str, Any]) -> str:
    """The submission's part of summary.md."""
    total = len(GLUE_SUBMISSION)
    state = ("complete" if info["complete"] else
             f"**incomplete**, the GLUE server refuses it without all {total} files")
    out = ["## GLUE submission", "",
           (f"`{SUBMISSION_ZIP}` (files also in `{SUBMISSION_DIR}/`): {len(info['files'])} of "
            f"the {total} files, {state}." if info["zip"] else "No submission written."), ""]
    if info["files"]:
        out += ["| file | task | rows | predictions |", "|---|---|---:|---|"]
        out += [f"| {name} | {f['task']} | {f['rows']} | "
                f"{f.get('predictions') or 'filled: ' + f['filled']} |"
                for name, f in info["files"].items()]
        out += [""] if info["missing"] else []
    out += [f"- {name}: missing, {why}" for name, why in info["missing"].items()]
    return "\n".join(out)


def predict_tests(config: Any, task_dir: str, tests: dict[str, str], tag: str) -> None:
    """predictions/<name>.tsv in ``task_dir`` for each name -> test file of ``tests``, by the
    task's kept checkpoint (e.g. MNLI's mismatched test set and the diagnostic set), as
    ``classify.run(..., eval_only=True)`` would predict its test file."""
    from bertjax.finetuning import runner

    chief = multihost.is_chief()
    say = (lambda s: progress.echo(f"[{tag}] {s}")) if chief else (lambda s: None)
    family = classify.ClassifyFamily()
    (first, first_path), *_ = tests.items()
    c = copy.deepcopy(config)
    with c.unlocked():
        c.data.test = first_path  # read by settle; the others below
    plan = runner.settle(c, task_dir, family, eval_only=True)
    with lock.hold(task_dir, chief=chief):
        built = runner.build(plan, say)
        say(f"predicting {', '.join(tests.values())} with the kept checkpoint (step "
            f"{built.best['step']})")
        try:
            for name, path in tests.items():
                split = (plan.testset if name == first else
                         family.read(plan.config, plan.tok, path, False))
                outputs, _ = built.evaluator.outputs(built.state.params, name, split)
                if chief:
                    family.write_predictions(os.path.join(task_dir, "predictions"), name,
                                             outputs, split)
        finally:
            built.ckpt.close()


def _finished(task_dir: str) -> dict | None:
    path = fs.path(task_dir) / "metrics.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _check_encoder(config: Any) -> None:
    """The checks every task shares, once: encoder sizes, tokenizer, mesh and batch sizes."""
    if not config.init_from and not config.tokenizer:
        raise config_lib.ConfigError("no encoder: give --init_from=WORKDIR (a pre-training "
                                     "workdir or an import), or --config.tokenizer=PATH to "
                                     "fine-tune from random init")
    if config.init_from and not fs.path(config.init_from).is_dir():
        raise config_lib.ConfigError(f"--init_from={config.init_from!r} does not exist; give a "
                                     "pre-training workdir or an import (bertjax.convert)")
    casing = {"": None, "true": True, "false": False}.get(str(config.do_lower_case).lower())
    features.load_tokenizer(config.init_from, config.tokenizer, casing)
    encoder.check_mesh(config, encoder.model_config_for(config))


def run_suite(config: Any, glue_dir: str, workdir: str, tasks: Sequence[str],
              init_from: str = "", overwrite: bool = False,
              predict_test: bool = True, fill_missing: bool = False) -> dict[str, Any]:
    """Fine-tunes every found task of ``tasks`` and writes the summary (and the submission).

    Args:
      config: a fine-tuning config (configs/glue.py with overrides); its task and data files
        are replaced per task.
      glue_dir: the GLUE download (the directory holding CoLA/, SST-2/, ...).
      workdir: each task runs in workdir/<task>; summary.md / summary.json go here.
      tasks: task names (see ``parse_tasks``).
      init_from: the encoder's workdir (default: config.init_from).
      overwrite: rerun tasks that already finished in their workdir.
      predict_test: also write predictions/test.tsv where the task has a test file (MNLI:
        test_mismatched.tsv and ax.tsv too), and the submission (``build_submission``).
      fill_missing: fill the submission's files of tasks not run with their majority class.

    Returns:
      The summary (see ``summarize``), with "submission" (see ``build_submission``) when
      ``predict_test``.

    Raises:
      ConfigError, DataError: one line; the suite's own checks (files, rows, encoder, mesh)
        run before anything is compiled or written; a failure inside a task's run names the
        task, and the tasks finished before it stay finished for the next run.
    """
    chief = multihost.is_chief()
    say = progress.echo if chief else (lambda s: None)  # above the suite's progress bar
    # 1. find
    if not fs.path(glue_dir).is_dir():
        raise config_lib.ConfigError(f"--glue_dir={glue_dir!r} is not a directory; give the "
                                     "GLUE download (holding CoLA/, SST-2/, MRPC/, ...)")
    init_from = init_from or config.init_from
    found, skipped = [], {}
    for task in tasks:
        files = find_files(glue_dir, task)
        if isinstance(files, str):
            skipped[task] = files
            say(f"skip {task}: {files}")
        else:
            found.append(files)
    if not found:
        raise config_lib.ConfigError(
            f"--glue_dir={glue_dir}: none of the tasks {','.join(tasks)} has its files "
            f"({'; '.join(skipped.values())}); expected the GLUE layout, e.g. "
            f"{os.path.join(glue_dir, 'SST-2', 'train.tsv')}")
    # 2. check
    configs = {f.task: task_config(config, f, init_from, predict_test) for f in found}
    done: dict[str, dict] = {}
    for f in found:
        previous = None if overwrite else _finished(os.path.join(workdir, f.task))
        if previous is not None:
            if not _same_path(previous.get("init_from"), init_from):
                raise config_lib.ConfigError(
                    f"{os.path.join(workdir, f.task)} holds a {f.task} run fine-tuned from "
                    f"{previous.get('init_from') or 'random init'}, not "
                    f"{init_from or 'random init'}; use another --workdir or --overwrite")
            done[f.task] = previous
            continue
        for path in (f.train, f.dev, f.dev_mismatched):
            # a bad row, or a file without rows, stops the suite here, not in its task
            if path and not readers.read_glue(path, f.task):
                raise DataError(f"{path}: holds no examples (a header or blank lines only); "
                                f"{f.task} needs at least one row in each of its files")
    # The test files: every row readable, with its index (or the suite stops here). A task
    # run now predicts test.tsv itself and its other test sets afterwards (MNLI's); a finished
    # one predicts those whose predictions are missing or of another length.
    ids: dict[str, list[str]] = {}
    more: dict[str, dict[str, str]] = {}  # task -> {predictions name: test file}
    for f in found if predict_test else ():
        for sub in submission_files(f.task):
            path = submission_test_file(glue_dir, sub)
            if not path:
                continue
            ids[path] = row_indices(path, f.task)
            pred = os.path.join(workdir, f.task, "predictions", f"{sub.prediction}.tsv")
            if (f.task in done and len(_predictions(pred) or ()) != len(ids[path])) or (
                    f.task not in done and sub.prediction != "test"):
                more.setdefault(f.task, {})[sub.prediction] = path
    pending = [f.task for f in found if f.task not in done]
    if pending:
        _check_encoder(configs[pending[0]])  # the same encoder and batch for every task
    # 3. run
    fs.path(workdir).mkdir(parents=True, exist_ok=True)
    # one suite at a time (each task locks its own); a bar of tasks above the tasks' bars
    with lock.hold(workdir, chief=chief), \
            progress.bar(len(found), "task", "glue", chief=chief,
                         wanted=config.get("progress_bar", True)) as tasks_bar:
        console.log_to(workdir)  # checked and locked: the libraries' lines go to WORKDIR/logs
        results: dict[str, dict] = {}
        for f in found:
            task_dir = os.path.join(workdir, f.task)
            if f.task in done:
                say(f"{f.task}: finished earlier in {task_dir}; not rerun (--overwrite reruns it)")
                results[f.task] = done[f.task]
            else:
                restart = rundir.saved_config(task_dir) is not None
                if restart and not overwrite:
                    say(f"{f.task}: {task_dir} holds an unfinished run; starting it again")
                stale = [os.path.join(task_dir, "metrics.json")] + [
                    os.path.join(task_dir, "predictions", f"{sub.prediction}.tsv")
                    for sub in (submission_files(f.task) if predict_test else ())]
                for path in stale if chief else ():  # this run writes them anew
                    fs.path(path).unlink(missing_ok=True)
                multihost.barrier(f"glue {f.task} workdir ready")
                try:
                    results[f.task] = classify.run(configs[f.task], task_dir, eval_only=False,
                                                   overwrite=restart, tag=f.task)
                except (config_lib.ConfigError, DataError) as e:
                    raise type(e)(f"{f.task}: {e}") from None
            if f.task in more:  # MNLI's other test sets, or a finished task's missing ones
                try:
                    predict_tests(configs[f.task], task_dir, more[f.task], f.task)
                except (config_lib.ConfigError, DataError) as e:
                    raise type(e)(f"{f.task}: {e}") from None
            # 4. report, after every task: an interrupted suite still shows what it finished
            summary = summarize(results, skipped, init_from)
            if chief:
                write_summary(workdir, summary)
            tasks_bar.set_postfix_str(f"{f.task} done", refresh=False)
            tasks_bar.update(1)
        tasks_bar.close()  # (closing twice is harmless)
        # 5. submit
        if predict_test and chief:
            reasons = {t: f"{t} not in --tasks" for t in GLUE_DIRS}
            reasons.update({t: f"{t} skipped: {why}" for t, why in skipped.items()})
            summary["submission"] = build_submission(glue_dir, workdir, list(results),
                                                     fill_missing, reasons, ids)
            write_summary(workdir, summary)
    say("\n" + table(summary))
    say(f"summary: {os.path.join(workdir, 'summary.md')} (and summary.json)")
    for line in submission_lines(summary["submission"]) if "submission" in summary else ():
        say(line)
    return summary
