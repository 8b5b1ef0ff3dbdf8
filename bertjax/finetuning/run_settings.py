"""The settings of a fine-tuning run: checked before anything is read (a workdir that holds a
pre-training run or an import is refused, ``check_workdir``), taken from the workdir for
``--eval_only``, compared with an unfinished run's before it resumes, and resolved (steps,
warmup) once the training set is read. Used by bertjax/finetuning/runner.py.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from bertjax import checkpoint as ckpt_lib
from bertjax import config as config_lib
from bertjax import rundir
from bertjax.data import fs


def resolved_steps(config: Any, train_size: int) -> tuple[int, int]:
    """(total steps, warmup steps) from epochs and the warmup fraction when not given."""
    steps = config.total_steps or max(1, int(config.num_epochs * train_size
                                             // config.global_batch_size))
    warmup = (config.optim.warmup_steps if config.optim.warmup_steps >= 0
              else int(config.warmup_fraction * steps))
    return steps, min(warmup, steps)


# The automatic fine-tuning rate (config.optim.lr = 0): BERT's 5e-5 at BERT-base's width,
# scaled by (768 / width)² and capped. The fine-tuning configs' default; README, Fine-tuning.
AUTO_LR_BASE, AUTO_LR_WIDTH, AUTO_LR_MAX = 5e-5, 768, 1e-3


def learning_rate(config: Any, hidden_size: int) -> tuple[float, str]:
    """(the peak fine-tuning rate, how it was chosen) for an encoder ``hidden_size`` wide.

    ``config.optim.lr`` when it is set; when it is 0, 5e-5 × (768 / width)², at most 1e-3:
    5e-5 for BERT-base, 2.8e-5 for large, 4.5e-4 for mini, 1e-3 for tiny. A small encoder
    needs a larger step: at BERT-base's 5e-5 a 128-wide encoder barely moves in a few hundred
    steps, and a pre-trained one (larger weights than a fresh one) moves least of all.

    Raises:
      ConfigError: a negative rate, or one of 1 or more.
    """
    lr = float(config.optim.lr)
    if not 0 <= lr < 1:
        raise config_lib.ConfigError(f"config.optim.lr={lr}; expected 0 < lr < 1, or 0 for the "
                                     "automatic rate by the encoder's width")
    if lr:
        return lr, "config.optim.lr"
    auto = min(AUTO_LR_MAX, AUTO_LR_BASE * (AUTO_LR_WIDTH / hidden_size) ** 2)
    return float(f"{auto:.2g}"), f"automatic for width {hidden_size}"


def with_learning_rate(config: Any, lr: float) -> Any:
    """A copy of ``config`` whose optimizer runs at ``lr`` (the saved config keeps 0: auto)."""
    copy = ml_collections.ConfigDict(config.to_dict())
    copy.optim.lr = lr
    return copy


def take_saved(config: Any, saved: dict) -> ml_collections.ConfigDict:
    """eval_only: a copy of ``config`` in which the fine-tuned model (task, family, encoder
    sizes, tokenizer, sequence length, QA windows, label list, regression, SQuAD version) is
    what the workdir says it is, whatever the command line says; data settings the command
    leaves empty (files) come from the workdir too, and so do the settings of how files are
    read (``READ_KEYS``: columns, format, tag scheme) the command leaves at their defaults, so
    that a dev or test file given alone is read with the columns the run was trained with.
    ``saved`` is upgraded (bertjax.rundir): keys it predates hold the values its run used."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.task = saved.get("task", out.task)
    if "family" in out and saved.get("family"):
        out.family = saved["family"]
    out.init_from = saved.get("init_from", "")
    if "rng_impl" in out:  # the state's key is of the kind the run trained with
        out.rng_impl = saved["rng_impl"]
    out.tokenizer = saved.get("tokenizer", "") or out.tokenizer
    if "pooling" in out:  # the head reads what it was trained on
        out.pooling = saved["pooling"]
    out.model = ml_collections.ConfigDict(saved["model"])
    # rows are cut (and NER sentences windowed) as in training
    out.max_seq_length = saved.get("max_seq_length", out.max_seq_length)
    for key in WINDOW_KEYS + MODEL_DATA_KEYS:  # QA contexts windowed as in training, and
        if key in out.data and key in saved.get("data", {}):  # the head's outputs as trained
            out.data[key] = saved["data"][key]
    for key, value in saved.get("data", {}).items():
        if key not in out.data:
            continue
        if key in READ_KEYS:  # how the files are read: the workdir's unless the command
            if out.data[key] == READ_KEYS[key]:  # line sets another value than the default
                out.data[key] = value
        elif not out.data[key] and value:
            out.data[key] = value
    return out


WINDOW_KEYS = ("doc_stride", "max_query_length")  # config.data keys that cut rows
# config.data keys that make the head what it is (its classes and their ids, regression, SQuAD
# v2.0's no-answer): eval_only always takes the workdir's, as it does the task.
MODEL_DATA_KEYS = ("labels", "regression", "version_2")
# config.data keys that say how a file is read (columns, format, tag scheme), with the value the
# config files leave them at: eval_only takes the workdir's unless the command line sets another.
READ_KEYS = {"text_a": "", "text_b": "", "label": "label", "format": "", "scheme": "",
             "word_column": 0, "tag_column": -1}
LATEST = rundir.LATEST  # the resumable state; "checkpoints" holds the best one
RESUME_KEYS = ("task", "family", "init_from", "seed", "rng_impl", "global_batch_size",
               "max_seq_length", "total_steps", "optim.lr", "optim.warmup_steps", "data.train",
               "data.tfds", "data.labels", "data.examples_per_row", "pooling")


def saved_latest(workdir: str) -> dict | None:
    """The config saved with the resumable (latest) checkpoint of an unfinished run, or None."""
    return rundir.saved_config(workdir, LATEST)


def check_settings(config: Any, eval_only: bool = False) -> None:
    """The settings that can be checked before any file is read or written.

    Raises:
      ConfigError: ``init_from`` missing, no steps to train (a negative ``total_steps``, or
        ``num_epochs`` <= 0 with ``total_steps`` 0) when training, or an unknown ``rng_impl``.
    """
    if not eval_only and config.init_from and not fs.path(config.init_from).is_dir():
        raise config_lib.ConfigError(f"config.init_from={config.init_from!r} does not exist; "
                                     "give a pre-training workdir (or one of its "
                                     "checkpoints/N) or an import")
    if not eval_only and config.total_steps < 0:
        raise config_lib.ConfigError(f"config.total_steps={config.total_steps}; expected a "
                                     "positive number of steps, or 0 for config.num_epochs")
    if not eval_only and not config.total_steps and not config.num_epochs > 0:
        raise config_lib.ConfigError(f"config.num_epochs={config.num_epochs}; expected more "
                                     "than 0 passes over the training set (or set "
                                     "config.total_steps)")
    config_lib.check_rng_impl(config)


def check_workdir(workdir: str, eval_only: bool, overwrite: bool) -> None:
    """A workdir holding a pre-training run or an import is neither evaluated as a
    fine-tuning nor written (nor, with --overwrite, emptied) by one: one line saying what it is
    and what to pass instead."""
    root = fs.path(workdir)
    if not root.is_dir() or (rundir.step_dir(workdir) is None and not (
            root / rundir.MODEL_CONFIG).exists()):
        return
    try:
        kind = rundir.resolve(workdir, "--workdir").kind
    except config_lib.ConfigError:
        return  # no complete checkpoint with a config: nothing here is a run of another kind
    if kind == "finetuning":
        return
    what = ("a pre-training run" if kind == "pretraining" else
            "an import (python -m bertjax.convert)")
    if eval_only:
        raise config_lib.ConfigError(
            f"--workdir={workdir} is {what}, not a fine-tuning; --eval_only evaluates a "
            f"fine-tuned workdir: fine-tune from this one first (--config.init_from={workdir} "
            "--workdir=NEW), then run --eval_only --workdir=NEW")
    raise config_lib.ConfigError(
        f"--workdir={workdir} is {what}, not a fine-tuning; a fine-tuning would write its "
        f"checkpoints there{' (--overwrite would delete its own)' if overwrite else ''}: start "
        f"from it with --config.init_from={workdir} and give another --workdir")


def setting_difference(saved: dict, config: Any) -> str | None:
    """The first setting (of RESUME_KEYS) in which ``config`` differs from the saved run
    (``saved`` upgraded by bertjax.rundir, as every reader gets it).

    ``config`` may still hold the automatic values that a run resolves once it has read its
    data (total_steps 0: from num_epochs; warmup_steps < 0: from warmup_fraction); the saved
    run's inputs to that resolution are compared instead.
    """
    current = ckpt_lib.config_to_json(config)
    keys = list(RESUME_KEYS)
    if not config.total_steps:
        keys[keys.index("total_steps")] = "num_epochs"
    if config.optim.warmup_steps < 0:
        keys[keys.index("optim.warmup_steps")] = "warmup_fraction"
    for key in keys:
        a, b = saved, current
        for part in key.split("."):
            a, b = (a or {}).get(part), (b or {}).get(part)
        if a != b:
            return f"config.{key}={b!r} (the earlier run had {a!r})"
    return None
