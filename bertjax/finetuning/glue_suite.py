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
             accuracy), and the average is the mean of those scores over the tasks run.

The same config (configs/glue.py with the command line's overrides) fine-tunes every task; only
``task`` and the data files change. TensorFlow is not imported here.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from typing import Any, Sequence

from bertjax import config as config_lib
from bertjax import multihost
from bertjax import rundir
from bertjax.data import tasks as readers
from bertjax.data.errors import DataError
from bertjax.data.glue import glue_task
from bertjax.finetuning import classify
from bertjax.finetuning import encoder
from bertjax.finetuning import features

# Task -> its directory in the GLUE download, in the GLUE paper's order.
GLUE_DIRS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
             "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
_SHORT = {"accuracy": "acc", "f1": "F1", "mcc": "MCC", "pearson": "Pearson",
          "spearman": "Spearman"}


@dataclasses.dataclass(frozen=True)
class TaskFiles:
    """One task's files ("" where absent)."""

    task: str
    train: str
    dev: str
    test: str = ""
    dev_mismatched: str = ""  # MNLI only


def parse_tasks(text: str) -> list[str]:
    """"cola,sst2" -> ["cola", "sst2"] (GLUE spellings such as SST-2 accepted); "" -> all."""
    if not text.strip():
        return list(GLUE_DIRS)
    out = []
    for name in (t.strip() for t in text.split(",") if t.strip()):
        key = name.lower().replace("-", "")
        if key not in GLUE_DIRS:
            raise config_lib.ConfigError(f"--tasks: {name!r} is not a GLUE task; expected a "
                                         f"comma-separated subset of {','.join(GLUE_DIRS)}")
        if key not in out:
            out.append(key)
    return out


def find_files(glue_dir: str, task: str) -> TaskFiles | str:
    """The task's files under ``glue_dir``, or the reason it cannot run (a missing file)."""
    spec = glue_task(task)
    root = os.path.join(glue_dir, GLUE_DIRS[task])
    train, dev = os.path.join(root, "train.tsv"), os.path.join(root, spec.dev_files[0])
    for path in (train, dev):
        if not os.path.isfile(path):
            return f"{path} not found"
    test = os.path.join(root, spec.test_files[0])
    mismatched = os.path.join(root, spec.dev_files[1]) if len(spec.dev_files) > 1 else ""
    return TaskFiles(task, train, dev, test if os.path.isfile(test) else "",
                     mismatched if mismatched and os.path.isfile(mismatched) else "")


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
    norm = (lambda p: os.path.realpath(p) if p else "")
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
    for name, text in (("summary.json", json.dumps(summary, indent=2)), ("summary.md", md)):
        path = os.path.join(workdir, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return md


def _finished(task_dir: str) -> dict | None:
    path = os.path.join(task_dir, "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _check_encoder(config: Any) -> None:
    """The checks every task shares, once: encoder sizes, tokenizer, mesh and batch sizes."""
    if not config.init_from and not config.tokenizer:
        raise config_lib.ConfigError("no encoder: give --init_from=WORKDIR (a pre-training "
                                     "workdir or an import), or --config.tokenizer=PATH to "
                                     "fine-tune from random init")
    if config.init_from and not os.path.isdir(config.init_from):
        raise config_lib.ConfigError(f"--init_from={config.init_from!r} does not exist; give a "
                                     "pre-training workdir or an import (bertjax.convert)")
    casing = {"": None, "true": True, "false": False}.get(str(config.do_lower_case).lower())
    features.load_tokenizer(config.init_from, config.tokenizer, casing)
    encoder.check_mesh(config, encoder.model_config_for(config))


def run_suite(config: Any, glue_dir: str, workdir: str, tasks: Sequence[str],
              init_from: str = "", overwrite: bool = False,
              predict_test: bool = True) -> dict[str, Any]:
    """Fine-tunes every found task of ``tasks`` and writes the summary.

    Args:
      config: a fine-tuning config (configs/glue.py with overrides); its task and data files
        are replaced per task.
      glue_dir: the GLUE download (the directory holding CoLA/, SST-2/, ...).
      workdir: each task runs in workdir/<task>; summary.md / summary.json go here.
      tasks: task names (see ``parse_tasks``).
      init_from: the encoder's workdir (default: config.init_from).
      overwrite: rerun tasks that already finished in their workdir.
      predict_test: also write predictions/test.tsv where the task has a test file.

    Returns:
      The summary (see ``summarize``).

    Raises:
      ConfigError, DataError: one line; the suite's own checks (files, rows, encoder, mesh)
        run before anything is compiled or written; a failure inside a task's run names the
        task, and the tasks finished before it stay finished for the next run.
    """
    chief = multihost.is_chief()
    say = (lambda s: print(s, flush=True)) if chief else (lambda s: None)
    # 1. find
    if not os.path.isdir(glue_dir):
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
        for path in (f.train, f.dev, f.test if predict_test else "", f.dev_mismatched):
            if path:
                readers.read_glue(path, f.task)  # a bad row stops the suite here, not later
    pending = [f.task for f in found if f.task not in done]
    if pending:
        _check_encoder(configs[pending[0]])  # the same encoder and batch for every task
    # 3. run
    os.makedirs(workdir, exist_ok=True)
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
            if chief and os.path.exists(os.path.join(task_dir, "metrics.json")):
                os.remove(os.path.join(task_dir, "metrics.json"))  # stale until this run ends
            multihost.barrier(f"glue {f.task} workdir ready")
            try:
                results[f.task] = classify.run(configs[f.task], task_dir, eval_only=False,
                                               overwrite=restart, tag=f.task)
            except (config_lib.ConfigError, DataError) as e:
                raise type(e)(f"{f.task}: {e}") from None
        # 4. report, after every task: an interrupted suite still shows what it finished
        summary = summarize(results, skipped, init_from)
        if chief:
            write_summary(workdir, summary)
    say("\n" + table(summary))
    say(f"summary: {os.path.join(workdir, 'summary.md')} (and summary.json)")
    return summary
