"""The one owner of a run directory's layout: every reader of a workdir goes through here.

A bertjax run directory (WORKDIR) holds::

  checkpoints/<step>/state   orbax: the TrainState, each host its shards
  checkpoints/<step>/config  the run config as JSON (orbax's ``config/metadata`` file)
  checkpoints/<step>/data    each host's input-iterator state (pre-training)
  checkpoints_latest/<step>  fine-tuning: the resumable state until the run finishes
  model_config.json          an import (bertjax.convert --from=hf|tf): the model's sizes
  vocab.txt, tokenizer_config.json   an import's WordPiece tokenizer and its casing

and is one of three kinds: a pre-training run, a fine-tuning run (its config has a ``task``),
or an import. ``init_from`` and ``--init_from`` name a workdir, or one step of it
(WORKDIR/checkpoints/N); ``resolve`` turns either into a ``Run``: the step directory the
parameters come from, the saved config (old configs upgraded once, here, from ``ABSENT_MEANS``),
the model's sizes and where its tokenizer is.

A step directory counts only when it is complete (``<step>/state`` holds orbax's metadata):
a stray or half-written ``checkpoints/70`` beside a good ``checkpoints/50`` is skipped
(``stray_steps`` lists such directories; bertjax.checkpoint sets them aside before resuming).
A saved config that is not JSON is one ``error:`` line naming the file.

Nothing here opens a CheckpointManager or imports orbax or TensorFlow: it runs before JAX's
backends are set up and never creates anything in the directory it reads. Paths go through
etils.epath, so gs:// workdirs read the same way.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from etils import epath

from bertjax import config as config_lib

CHECKPOINTS = "checkpoints"  # pre-training's steps; fine-tuning's kept (best) checkpoint
LATEST = "checkpoints_latest"  # fine-tuning's resumable state, removed when the run finishes
MODEL_CONFIG = "model_config.json"  # an import's sizes
VOCAB = "vocab.txt"  # an import's WordPiece vocabulary
_STATE_MARK = ("state", "_METADATA")  # written by orbax when the state item is complete

# Keys added after the first release, and the value older runs ran with (dotted paths).
# ``upgrade`` fills them into a saved config once, where it is read; after that every reader
# sees a complete config. Per kind: each key belongs to the configs that have it.
ABSENT_MEANS = {"rng_impl": "threefry2x32", "model.scan_layers": False, "model.remat": "none",
                "model.prune_last_layer": True,  # the same numbers as the whole layer
                "model.tie_word_embeddings": True, "optim.embedding_lr": 0.0}
ABSENT_MEANS_PRETRAINING = {"data.pairs_per_row": 1}
ABSENT_MEANS_FINETUNING = {"data.examples_per_row": 1,
                           "pooling": "cls"}  # fine-tuned classifiers before the key: BERT's pooler


def is_finetuning(saved: dict) -> bool:
    """Whether a saved run config is a fine-tuning's (they name a task)."""
    return "task" in saved


def upgrade(saved: dict) -> dict:
    """``saved`` with every key it predates set to the value its run used (a new dict)."""
    out = json.loads(json.dumps(saved))
    table = dict(ABSENT_MEANS)
    table.update(ABSENT_MEANS_FINETUNING if is_finetuning(out) else ABSENT_MEANS_PRETRAINING)
    for key, value in table.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = value
    return out


def steps(root: Any) -> list[int]:
    """The complete checkpoint steps under ``root`` (a checkpoints directory), ascending."""
    root = epath.Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.name.isdigit() and child.joinpath(*_STATE_MARK).exists():
            found.append(int(child.name))
    return sorted(found)


def stray_steps(root: Any) -> list[epath.Path]:
    """Entries of a checkpoints directory named like a step that are not complete steps (an
    empty or half-copied ``checkpoints/70``), ascending: orbax counts them, ``steps`` does not."""
    root = epath.Path(root)
    if not root.is_dir():
        return []
    found = [child for child in root.iterdir()
             if child.name.isdigit() and not child.joinpath(*_STATE_MARK).exists()]
    return sorted(found, key=lambda child: int(child.name))


def is_step_dir(path: Any) -> bool:
    """Whether ``path`` is one complete checkpoint step (WORKDIR/checkpoints/N)."""
    return epath.Path(path).joinpath(*_STATE_MARK).exists()


def step_dir(path: Any, subdir: str = CHECKPOINTS) -> epath.Path | None:
    """The step directory a path stands for: itself when it is one, else the newest complete
    step of ``path/subdir`` (or of ``path`` when it is a checkpoints directory); None if none."""
    path = epath.Path(path)
    if is_step_dir(path):
        return path
    for root in (path / subdir, path):
        found = steps(root)
        if found:
            return root / str(found[-1])
    return None


def read_config(step: Any) -> dict | None:
    """The upgraded run config saved in a step directory, or None when it has none.

    Raises:
      ConfigError: the file is not a JSON object (one line naming it: the step is damaged).
    """
    path = epath.Path(step) / "config" / "metadata"
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        saved = e
    if not isinstance(saved, dict):
        why = (f"not valid JSON ({saved})" if isinstance(saved, ValueError) else
               f"a JSON {type(saved).__name__}, not an object")
        raise config_lib.ConfigError(
            f"{path}: the run config saved with checkpoint step {epath.Path(step).name} is "
            f"{why}; the step is damaged: move {step} out of its directory to use the step "
            "before it")
    return upgrade(saved)


def saved_config(path: Any, subdir: str = CHECKPOINTS) -> dict | None:
    """The upgraded config saved with the newest complete step of a workdir that has one
    (``path`` may be one step directory: then that step's); None when there is none."""
    path = epath.Path(path)
    if is_step_dir(path):
        return read_config(path)
    for root in (path / subdir, path):
        for step in reversed(steps(root)):
            config = read_config(root / str(step))
            if config is not None:
                return config
    return None


def workdir_of(path: Any) -> epath.Path:
    """The workdir a path belongs to: WORKDIR for WORKDIR/checkpoints/N, else ``path``."""
    path = epath.Path(path)
    if is_step_dir(path) and path.parent.name in (CHECKPOINTS, LATEST):
        return path.parent.parent
    return path


@dataclasses.dataclass(frozen=True)
class Run:
    """What a workdir (or one step of it) holds, read once.

    Attributes:
      path: the workdir as given (absolute).
      root: the workdir the step belongs to (the import's files live here).
      kind: "pretraining", "finetuning" or "import".
      step_dir: the checkpoint step parameters are read from.
      saved: the run config saved with that step, upgraded (an import's is a synthetic one).
    """

    path: str
    root: str
    kind: str
    step_dir: str
    saved: dict

    @property
    def step(self) -> int:
        return int(epath.Path(self.step_dir).name)

    def model_config(self) -> Any:
        """The model's sizes (model.BertConfig): an import's model_config.json, else the saved
        run config's model over today's defaults (runs saved before a key existed lack it)."""
        from bertjax import model as model_lib

        meta = epath.Path(self.root) / MODEL_CONFIG
        if meta.exists():
            return model_lib.BertConfig(**json.loads(meta.read_text())["bertjax"])
        full = config_lib.base_config()
        full.model.update(self.saved.get("model", {}))
        return config_lib.model_config(full)

    def tokenizer(self) -> tuple[str, str] | None:
        """Where this run's tokenizer is: ("wordpiece", dir with vocab.txt), ("sentencepiece",
        .model file) or, for a fine-tuning, whatever it recorded; None when it cannot be found."""
        if (epath.Path(self.root) / VOCAB).exists():
            return "wordpiece", str(self.root)
        recorded = self.saved.get("tokenizer", "")
        if recorded:
            return ("wordpiece" if epath.Path(recorded).is_dir() else "sentencepiece"), recorded
        return data_tokenizer(self.saved)

    def initialised(self) -> list[str]:
        """An import's parameters that its checkpoint lacked and that were initialised fresh
        (e.g. a BertModel's pre-training heads: "mlm/transform/kernel", "nsp/..."); [] for a
        bertjax run or a complete import."""
        meta = epath.Path(self.root) / MODEL_CONFIG
        if self.kind != "import" or not meta.exists():
            return []
        return list(json.loads(meta.read_text()).get("import", {}).get("initialised", []))


def data_tokenizer(saved: dict) -> tuple[str, str] | None:
    """The tokenizer of a pre-training run's data, from its saved config (its data directory's
    metadata.json names it): ("wordpiece", the data directory, which holds the imported
    model's vocab.txt and casing) for data prepared with ``--vocab``, else ("sentencepiece",
    the .model file); None when that directory or file is gone."""
    import ml_collections

    from bertjax.data import prepare  # no TensorFlow at import: where a config's data lives

    config = ml_collections.ConfigDict(saved)
    if config.get("data", {}).get("source") not in ("embedded", "prepared"):
        return None
    data_dir = prepare.data_path(config)
    meta = epath.Path(data_dir) / "metadata.json" if data_dir else None
    if meta is None or not meta.exists():
        return None
    meta = json.loads(meta.read_text())
    if meta.get("tokenizer_type") == prepare.WORDPIECE:
        return "wordpiece", str(data_dir)
    return "sentencepiece", str(epath.Path(data_dir) / meta.get("tokenizer", "tokenizer.model"))


def sentencepiece_path(saved: dict) -> str | None:
    """Where a pre-training run's sentencepiece model lives (``data_tokenizer``); None when it
    is gone or the run's data were tokenized with WordPiece."""
    found = data_tokenizer(saved)
    return found[1] if found and found[0] == "sentencepiece" else None


def resolve(path: str, what: str = "config.init_from") -> Run:
    """The run at ``path`` (a workdir or one of its step directories).

    Args:
      path: the directory, local or gs://.
      what: the flag or config key that named it, for messages.

    Raises:
      ConfigError: one line when ``path`` is missing or holds no complete checkpoint.
    """
    hint = ("give a pre-training or fine-tuning workdir (or one of its checkpoints/N), or an "
            "import made with python -m bertjax.convert")
    p = epath.Path(path)
    if not path or not p.exists():
        raise config_lib.ConfigError(f"{what}={path!r} does not exist; {hint}")
    if not p.is_dir():
        raise config_lib.ConfigError(f"{what}={path!r} is not a directory; {hint}")
    step = step_dir(p)
    if step is None:
        raise config_lib.ConfigError(f"{what}={path!r} holds no complete bertjax checkpoint; {hint}")
    root = workdir_of(step) if is_step_dir(p) else p
    saved = read_config(step)
    # an import holds its sizes and/or its WordPiece vocabulary; a bertjax run has neither
    is_import = (root / MODEL_CONFIG).exists() or (root / VOCAB).exists()
    if saved is None and not is_import:
        raise config_lib.ConfigError(f"{what}={path!r}: checkpoint {step} has no saved config; {hint}")
    kind = "import" if is_import else (
        "finetuning" if is_finetuning(saved) else "pretraining")
    return Run(path=absolute(path), root=absolute(root), kind=kind, step_dir=absolute(step),
               saved=saved or {})


def absolute(path: Any) -> str:
    """``path`` as orbax needs it: absolute (a relative one reads no checkpoint metadata).
    gs:// and other URLs are absolute already."""
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(path)

