"""Sequence classification and regression: the head, the loss, the metrics, the predictions.

``ClassifyFamily`` is this family for the shared fine-tuning loop (bertjax/finetuning/runner.py:
checks, sharded state, training, padded evaluation, best checkpoint, reports):

  * model    ``SequenceClassifier``: BertModel + dropout + dense on the pooled output (1 unit
             and MSE for regression), its encoder restorable from a pre-training run;
  * data     GLUE TSVs, or the user's CSV/TSV/JSONL columns (``config.task="custom"``), or
             TFDS glue/<task> (``config.data.tfds``), featurised as [CLS] A [SEP] (B [SEP]);
  * metrics  the GLUE table's (bertjax.data.glue) or accuracy/F1/correlations for custom
             tasks, over the whole gathered set; the first is the headline;
  * output   GLUE-style prediction TSVs (index, prediction) in predictions/<split>.tsv.

``run(config, workdir, eval_only, overwrite, tag)`` is the runner with this family.

TensorFlow is not imported here.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bertjax import config as config_lib
from bertjax import model as model_lib
from bertjax import train
from bertjax.data import fs
from bertjax.data import tasks as readers
from bertjax.data.errors import DataError
from bertjax.data.glue import glue_task
from bertjax.finetuning import embedding
from bertjax.finetuning import features
from bertjax.finetuning import metrics as metrics_lib
from bertjax.finetuning import runner
from bertjax.finetuning.runner import eval_batches, host_rows, predict  # noqa: F401 (re-exported)

Batch = dict[str, jax.Array]


# ------------------------------------------------------------------------------------ model


class SequenceClassifier(nn.Module):
    """BERT encoder, dropout on the pooled [CLS] vector, then a dense layer to the outputs.

    The encoder is named ``bert`` as in BertForPreTraining, so pre-trained encoder parameters
    restore into it by name; the head (``classifier``) is always freshly initialised.
    """

    cfg: model_lib.BertConfig
    num_outputs: int
    head_dropout: float = 0.1
    pooling: str = "mean"  # mean: of each example's real tokens; cls: BERT's tanh pooler on [CLS]

    @nn.compact
    def __call__(self, input_ids: jax.Array, input_mask: jax.Array, segment_ids: jax.Array,
                 deterministic: bool = True, position_ids: jax.Array | None = None,
                 pack_ids: jax.Array | None = None,
                 cls_positions: jax.Array | None = None) -> jax.Array:
        """Returns float32 [B, num_outputs]: class logits, or the score for regression; for
        packed rows (bertjax/finetuning/packing.py) [B, M, num_outputs], one per example slot."""
        bert = model_lib.BertModel(self.cfg, name="bert")
        seq, pooled = bert(input_ids, input_mask, segment_ids, position_ids, deterministic,
                           pack_ids)  # [B, L, D], [B, D]
        if self.pooling == "mean":  # the encoder's pooler is not used (nor trained)
            pooled = (embedding.pool(seq, input_mask, "mean", False) if cls_positions is None
                      else embedding.pool_packed(seq, pack_ids, cls_positions, "mean", False))
            pooled = pooled.astype(seq.dtype)
        elif cls_positions is not None:  # each packed example's [CLS]
            pooled = bert.pool(jnp.take_along_axis(seq, cls_positions[..., None], axis=1))
        pooled = nn.Dropout(self.head_dropout)(pooled, deterministic=deterministic)
        init = nn.initializers.truncated_normal(stddev=self.cfg.initializer_range)
        out = nn.Dense(self.num_outputs, dtype=self.cfg.compute_dtype,
                       param_dtype=self.cfg.weight_dtype,
                       kernel_init=nn.with_logical_partitioning(init, ("embed", "classes")),
                       bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                              ("classes",)),
                       name="classifier")(pooled)
        return out.astype(jnp.float32)  # [B, C]


# ------------------------------------------------------------------------------------- task


@dataclasses.dataclass(frozen=True)
class Task:
    """What the loop needs to know about a task; GLUE tasks come from the metrics table."""

    name: str
    labels: tuple[str, ...] | None  # None: regression
    metric_names: tuple[str, ...]  # the first is the headline (best-checkpoint) metric
    glue: bool

    @property
    def regression(self) -> bool:
        return self.labels is None

    @property
    def num_outputs(self) -> int:
        return 1 if self.labels is None else len(self.labels)


def resolve_task(config: Any) -> Task:
    """The Task of ``config.task``: a GLUE name, or "custom"/"demo" described by config.data."""
    d = config.data
    if config.task in ("custom", "demo"):
        labels = tuple(x.strip() for x in d.labels.split(",") if x.strip())
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice and not d.regression:
            raise config_lib.ConfigError(
                f"config.data.labels={d.labels!r} lists {', '.join(map(repr, twice))} more than "
                "once; each class once, comma-separated in class-id order (e.g. "
                "--config.data.labels=neg,pos)")
        if not d.regression and len(labels) < 2:
            raise config_lib.ConfigError(
                f"config.data.labels={d.labels!r}; a classification task needs at least two "
                "labels, comma-separated in class-id order (e.g. --config.data.labels=neg,pos), "
                "or --config.data.regression=True")
        if d.regression:
            return Task(config.task, None, ("pearson", "spearman"), glue=False)
        names = ("accuracy", "f1") if len(labels) == 2 else ("accuracy",)
        return Task(config.task, labels, names, glue=False)
    try:
        spec = glue_task(config.task)
    except ValueError as e:
        raise config_lib.ConfigError(f"config.task={config.task!r}: {e}, or 'custom'") from None
    return Task(spec.name, spec.labels, spec.metrics, glue=True)


def read_split(config: Any, task: Task, path: str, labelled: bool = True) -> list[dict]:
    """Reads one data file of the task (GLUE TSV, or the user's CSV/TSV/JSONL columns)."""
    if task.glue:
        return readers.read_glue(path, task.name)
    d = config.data
    if not d.text_a:
        raise config_lib.ConfigError("config.data.text_a is empty; name the text column of "
                                     f"{path} (e.g. --config.data.text_a=sentence)")
    return readers.read_table(path, d.text_a, d.text_b or None,
                              (d.label or None) if labelled else None,
                              labels=task.labels, regression=task.regression,
                              file_format=d.format or None)


def score(task: Task, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics over the whole gathered set (outputs: [N, C] logits or [N, 1])."""
    preds = outputs[:, 0] if task.regression else outputs.argmax(-1)
    if task.glue:
        return metrics_lib.glue_metrics(task.name, preds, labels)
    fns = {"accuracy": metrics_lib.accuracy, "f1": metrics_lib.f1,
           "pearson": metrics_lib.pearson, "spearman": metrics_lib.spearman}
    return {m: fns[m](preds, labels) for m in task.metric_names}


# ----------------------------------------------------------------------------------- family


def loss_stats(outputs: jax.Array, labels: jax.Array, mask: jax.Array,
               regression: bool) -> dict[str, jax.Array]:
    """(sum, count) statistics: cross-entropy (or squared error) summed over real examples,
    and for classification the number of correct predictions (logged as accuracy). Outputs
    [..., C] with labels and mask [...]: one example per row, or per packed slot."""
    mask = mask.astype(jnp.float32)
    if regression:
        per = jnp.square(outputs[..., 0] - labels.astype(jnp.float32))  # [B]
        return {"loss_sum": jnp.sum(per * mask), "count": jnp.sum(mask)}
    per = optax.softmax_cross_entropy_with_integer_labels(outputs, jnp.maximum(labels, 0))
    correct = (outputs.argmax(-1) == labels).astype(jnp.float32)
    return {"loss_sum": jnp.sum(per * mask), "accuracy": jnp.sum(correct * mask),
            "count": jnp.sum(mask)}


def jit_steps(fns: train.StepFns, batch_like: dict, regression: bool) -> tuple[Callable, Callable]:
    """The runner's jitted train and eval steps with this family's loss."""
    return runner.jit_steps(fns, batch_like, lambda out, batch: loss_stats(
        out, batch["label"], batch["example_mask"], regression))


def _write_predictions(path: str, task: Task, outputs: np.ndarray) -> None:
    """GLUE submission style: a header, then index<TAB>prediction (label name or score)."""
    with fs.atomic_write(path) as f:
        f.write("index\tprediction\n")
        for i, row in enumerate(outputs):
            value = f"{row[0]:.6f}" if task.regression else task.labels[int(row.argmax())]
            f.write(f"{i}\t{value}\n")


class ClassifyFamily:
    """Sequence classification / regression for the runner (bertjax.finetuning.runner.Family)."""

    name = "classify"
    packs = "examples"  # packed rows (config.data.examples_per_row > 1; tasks/packing.py)

    def __init__(self):
        self.task: Task | None = None
        self.head_dropout = 0.1
        self.pooling = "mean"

    def prepare(self, config: Any) -> None:
        self.task = resolve_task(config)
        self.head_dropout = config.head_dropout
        self.pooling = config.pooling
        if self.pooling not in ("cls", "mean"):
            raise config_lib.ConfigError(f"config.pooling={self.pooling!r}; expected 'cls' "
                                         "(BERT's pooler on [CLS]) or 'mean' (mean of the tokens)")
        tfds_name = config.data.get("tfds", "")
        if tfds_name and tfds_name.split(":")[0] != f"glue/{self.task.name}":
            raise config_lib.ConfigError(
                f"config.data.tfds={tfds_name!r} does not hold task {self.task.name!r}; "
                f"classification reads TFDS glue/<task> (here glue/{self.task.name}), or "
                "use files")

    @property
    def task_name(self) -> str:
        return self.task.name

    @property
    def metric_names(self) -> tuple[str, ...]:
        return self.task.metric_names

    def make_model(self, cfg: model_lib.BertConfig) -> nn.Module:
        return SequenceClassifier(cfg, self.task.num_outputs, self.head_dropout, self.pooling)

    def read(self, config: Any, tok: features.TaskTokenizer, path: str,
             labelled: bool) -> runner.Split:
        task = self.task
        rows = runner.examples(config, path,
                               lambda p: read_split(config, task, p, labelled=labelled))
        arrays = features.encode(rows, tok, config.max_seq_length, task.regression)
        label = arrays["label"]
        missing = np.isnan(label) if task.regression else label < 0
        if labelled and missing.any():  # e.g. a GLUE test file (no label column) given as dev
            raise DataError(f"{path}: row {rows[int(missing.argmax())]['guid']} has no label; "
                            "a training or dev file must be labelled (a test file goes to "
                            "--config.data.test)")
        return runner.Split(arrays, num_examples=len(rows))

    def loss_stats(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        return loss_stats(outputs, batch["label"], batch["example_mask"], self.task.regression)

    def score(self, outputs: np.ndarray, split: runner.Split) -> dict[str, float]:
        return score(self.task, outputs, split.arrays["label"])

    def write_predictions(self, directory: str, name: str, outputs: np.ndarray,
                          split: runner.Split) -> None:
        _write_predictions(os.path.join(directory, f"{name}.tsv"), self.task, outputs)


def run(config: Any, workdir: str, eval_only: bool = False, overwrite: bool = False,
        tag: str = "") -> dict[str, Any]:
    """Fine-tunes (or, ``eval_only``, evaluates) one classification / regression task; see
    bertjax.finetuning.runner.run for the arguments and what it returns."""
    return runner.run(config, workdir, ClassifyFamily(), eval_only, overwrite, tag)
