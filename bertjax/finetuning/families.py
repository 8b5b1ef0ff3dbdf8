"""Which task family a fine-tuning config asks for, and where that family lives.

``config.family`` names it ("classify", "ner", "qa"); left empty it follows ``config.task``
("ner" / "conll2003" -> ner, "squad*" -> qa, anything else -> classify). Families are imported
only when asked for, so a classification run never imports the NER or QA modules.
"""

from __future__ import annotations

import importlib
from typing import Any

from bertjax import config as config_lib
from bertjax import rundir

# name -> "module:class"; the class is built without arguments (runner.Family).
FAMILIES = {
    "classify": "bertjax.finetuning.classify:ClassifyFamily",
    "ner": "bertjax.finetuning.tagging:TaggingFamily",
    "qa": "bertjax.finetuning.qa:QAFamily",
}


def register(name: str, target: str) -> None:
    """Adds a family: ``target`` is "module:class"."""
    FAMILIES[name] = target


def family_name(config: Any) -> str:
    """The family of ``config`` (a ConfigDict or a saved dict): config.family, or the one its
    task name implies."""
    name = config.get("family", "") or ""
    if name:
        return name
    task = str(config.get("task", "")).lower()
    if task in ("ner", "conll2003") or task.startswith("ner"):
        return "ner"
    if task.startswith("squad") or task == "qa":
        return "qa"
    return "classify"


def get(config: Any, workdir: str = "", eval_only: bool = False):
    """A fresh family object for ``config`` (eval_only: for the model the workdir holds).

    Raises:
      ConfigError: an unknown family, named with the known ones.
    """
    if eval_only and workdir:
        saved = rundir.saved_config(workdir)
        if saved is not None:  # the fine-tuned model decides, not the command line
            config = {"family": saved.get("family", ""), "task": saved.get("task", "")}
    name = family_name(config)
    if name not in FAMILIES:
        raise config_lib.ConfigError(f"config.family={name!r} is not a known task family; "
                                     f"use one of {sorted(FAMILIES)}")
    module, _, cls = FAMILIES[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
