"""The GLUE task table: how to read and score each of the nine GLUE tasks, and the files of a
leaderboard submission (``GLUE_SUBMISSION``).

Plain data, no dependencies: the TSV readers (bertjax.data.tasks) take the columns and label
lists from it, the metrics (bertjax.finetuning.metrics.glue_metrics) the metric names, the GLUE
suite (bertjax.finetuning.glue_suite) the submission's file names and where their test files lie.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """How to read and score one GLUE task.

    Attributes:
      name: task name as used on the command line (e.g. "mrpc").
      labels: label strings as they appear in the TSV, in class-id order; None for regression.
      text_a: header name of the first text column.
      text_b: header name of the second text column, None for single-sentence tasks.
      label_column: header name of the label column (absent from test files).
      metrics: metric names bertjax.finetuning.metrics.glue_metrics reports; the first is the
        task's headline metric.
      dev_files: file names of the dev split(s) in the GLUE directory of the task.
      test_files: file names of the unlabelled test split(s).
      headerless_columns: column names to assume when train/dev files have no header line
        (only CoLA); test files always have a header.
      skip_short_rows: skip rows with too few columns instead of failing (QQP's train.tsv holds
        a handful of broken lines; other tasks should fail loudly on them).
    """
    name: str
    labels: tuple[str, ...] | None
    text_a: str
    text_b: str | None
    label_column: str
    metrics: tuple[str, ...]
    dev_files: tuple[str, ...] = ("dev.tsv",)
    test_files: tuple[str, ...] = ("test.tsv",)
    headerless_columns: tuple[str, ...] | None = None
    skip_short_rows: bool = False

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        """Output width of the task head: 1 for regression."""
        return 1 if self.labels is None else len(self.labels)


GLUE_TASKS: Mapping[str, GlueTask] = {t.name: t for t in (
    GlueTask("cola", ("0", "1"), "sentence", None, "label", ("mcc",),
             headerless_columns=("source", "label", "original_label", "sentence")),
    GlueTask("sst2", ("0", "1"), "sentence", None, "label", ("accuracy",)),
    GlueTask("mrpc", ("0", "1"), "#1 String", "#2 String", "Quality", ("f1", "accuracy")),
    GlueTask("qqp", ("0", "1"), "question1", "question2", "is_duplicate", ("f1", "accuracy"),
             skip_short_rows=True),
    GlueTask("mnli", ("contradiction", "entailment", "neutral"), "sentence1", "sentence2",
             "gold_label", ("accuracy",),
             dev_files=("dev_matched.tsv", "dev_mismatched.tsv"),
             test_files=("test_matched.tsv", "test_mismatched.tsv")),
    GlueTask("qnli", ("entailment", "not_entailment"), "question", "sentence", "label",
             ("accuracy",)),
    GlueTask("rte", ("entailment", "not_entailment"), "sentence1", "sentence2", "label",
             ("accuracy",)),
    GlueTask("wnli", ("0", "1"), "sentence1", "sentence2", "label", ("accuracy",)),
    GlueTask("stsb", None, "sentence1", "sentence2", "score", ("pearson", "spearman")),
)}


def glue_task(name: str) -> GlueTask:
    """The GlueTask called `name` (case-insensitive; "sts-b"/"sst-2" spellings accepted).

    Args:
      name: task name.

    Returns:
      The task entry; ValueError listing the known tasks otherwise.
    """
    key = name.lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; expected one of {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[key]


# ------------------------------------------------------------------------- the submission


@dataclasses.dataclass(frozen=True)
class SubmissionFile:
    """One file of a GLUE leaderboard submission (gluebenchmark.com/submit).

    Attributes:
      name: its name at the top level of the submission zip, as the server wants it.
      task: the task whose fine-tuned model predicts it (MNLI's predicts three files).
      test_files: where its unlabelled test file may lie in the GLUE download, relative to the
        download's root with "/" separators; the first that exists is read. Each has a header
        with an ``index`` (QQP: ``id``) column, the example's number in the submission.
      prediction: the name of the predictions file in the task's workdir (predictions/NAME.tsv).
    """
    name: str
    task: str
    test_files: tuple[str, ...]
    prediction: str = "test"


# The files the GLUE server takes, in its order: a zip with exactly these names at its top level,
# each "index<TAB>prediction" then one row per test example (the test file's index, in its
# order); predictions are label strings as in the training files ("0"/"1" for CoLA, SST-2,
# MRPC, QQP, WNLI; entailment/neutral/contradiction for MNLI and AX; entailment/not_entailment
# for QNLI and RTE) and STS-B a score in [0, 5]. AX, the diagnostic set, has no training data:
# the MNLI model predicts it. Its file is diagnostic/diagnostic.tsv in the layout of
# download_glue_data.py (columns index, sentence1, sentence2: MNLI's text columns, so the MNLI
# reader reads it), AX.tsv where it was fetched alone.
GLUE_SUBMISSION: tuple[SubmissionFile, ...] = (
    SubmissionFile("CoLA.tsv", "cola", ("CoLA/test.tsv",)),
    SubmissionFile("SST-2.tsv", "sst2", ("SST-2/test.tsv",)),
    SubmissionFile("MRPC.tsv", "mrpc", ("MRPC/test.tsv",)),
    SubmissionFile("STS-B.tsv", "stsb", ("STS-B/test.tsv",)),
    SubmissionFile("QQP.tsv", "qqp", ("QQP/test.tsv",)),
    SubmissionFile("MNLI-m.tsv", "mnli", ("MNLI/test_matched.tsv",)),
    SubmissionFile("MNLI-mm.tsv", "mnli", ("MNLI/test_mismatched.tsv",), "test_mismatched"),
    SubmissionFile("QNLI.tsv", "qnli", ("QNLI/test.tsv",)),
    SubmissionFile("RTE.tsv", "rte", ("RTE/test.tsv",)),
    SubmissionFile("WNLI.tsv", "wnli", ("WNLI/test.tsv",)),
    SubmissionFile("AX.tsv", "mnli", ("diagnostic/diagnostic.tsv", "diagnostic/AX.tsv",
                                      "AX.tsv"), "ax"),
)
STSB_RANGE = (0.0, 5.0)  # STS-B's similarity scores; submitted predictions are clipped to it
