"""Text (pairs) -> fixed-length model inputs, with the tokenizer that belongs to the checkpoint.

``encode`` turns reader examples ({"text_a", "text_b", "label"}, see bertjax.data.tasks) into
``[CLS] A [SEP] (B [SEP])`` rows of ``input_ids / input_mask / segment_ids`` (int32 [N, L]),
truncating the longer segment first (google-research/bert's rule, via wordpiece.pack_pair).

Two tokenizers fit a bertjax checkpoint, and the checkpoint decides which (``load_tokenizer``):
  * an import of an HF / google-research model (bertjax.convert) holds ``vocab.txt`` and its
    casing: WordPiece, id for id like BertTokenizer;
  * a bertjax pre-training run saved its config with each checkpoint; that config names its data
    directory (bertjax.data.prepare.data_path) whose ``metadata.json`` names the sentencepiece
    model; a fine-tuning run recorded the tokenizer it used. bertjax.rundir finds either.

TensorFlow is not imported here: tokenising is host-side numpy work.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, Sequence

import numpy as np

from bertjax import rundir
from bertjax.data import fs
from bertjax.data import wordpiece
from bertjax.data.errors import DataError

FEATURE_KEYS = ("input_ids", "input_mask", "segment_ids")


class TaskTokenizer(Protocol):
    """What featurisation needs from a tokenizer (both adapters below provide it)."""

    cls_id: int
    sep_id: int
    pad_id: int
    unk_id: int
    mask_id: int
    vocab_size: int
    source: str
    path: str

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def token_texts(self, ids: Sequence[int]) -> list[str | None]: ...


class SentencePieceAdapter:
    """bertjax's sentencepiece Tokenizer with the attribute names featurisation uses."""

    def __init__(self, path: str):
        from bertjax.data import tokenizer as sp  # sentencepiece: only when this kind is used
        self._tok = sp.Tokenizer.load(path)
        self.cls_id, self.sep_id, self.pad_id = sp.CLS_ID, sp.SEP_ID, sp.PAD_ID
        self.unk_id, self.mask_id = sp.UNK_ID, sp.MASK_ID
        self.vocab_size = self._tok.vocab_size
        self.source = f"sentencepiece {path}"
        self.path = path  # what config.tokenizer takes to load this tokenizer again

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._tok.encode(list(texts))

    def token_texts(self, ids: Sequence[int]) -> list[str | None]:
        """The (normalised) text of each piece without its word mark "\u2581"; None for
        [UNK]. Span tasks align these to the original text (bertjax.finetuning.qa_features)."""
        from bertjax.data import tokenizer as sp
        return [None if i == sp.UNK_ID else self._tok.id_to_piece(i).replace("\u2581", "")
                for i in ids]


class WordPieceAdapter:
    """An imported checkpoint's WordPiece vocabulary (vocab.txt + tokenizer_config.json)."""

    def __init__(self, directory: str, do_lower_case: bool | None = None):
        try:
            self._tok = wordpiece.WordPieceTokenizer.from_dir(directory, do_lower_case)
        except (FileNotFoundError, ValueError) as e:
            raise DataError(str(e)) from None
        self.cls_id, self.sep_id, self.pad_id = (self._tok.cls_id, self._tok.sep_id,
                                                 self._tok.pad_id)
        self.unk_id, self.mask_id = self._tok.unk_id, self._tok.vocab.get("[MASK]", -1)
        self.vocab_size = self._tok.vocab_size
        casing = "uncased" if self._tok.do_lower_case else "cased"
        self.source = f"WordPiece {os.path.join(directory, 'vocab.txt')} ({casing})"
        self.path = directory
        self._inverse: dict[int, str] | None = None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._tok.encode_batch(list(texts))

    def token_texts(self, ids: Sequence[int]) -> list[str | None]:
        """The (normalised) text of each word piece without its "##" mark; None for [UNK]."""
        if self._inverse is None:
            self._inverse = {i: t for t, i in self._tok.vocab.items()}
        return [None if i == self._tok.unk_id else self._inverse[int(i)].removeprefix("##")
                for i in ids]


def load_tokenizer(init_from: str, override: str = "",
                   do_lower_case: bool | None = None) -> TaskTokenizer:
    """The tokenizer of a checkpoint.

    Args:
      init_from: a bertjax workdir (pre-training run or import).
      override: a sentencepiece .model file or a directory with vocab.txt, used instead of
        looking it up (a run on bert_tfrecords data, or a moved data directory).
      do_lower_case: WordPiece casing when the import did not record it.

    Returns:
      An object with encode_batch, cls_id, sep_id, pad_id, vocab_size and source.

    Raises:
      DataError: one line saying where it looked and what to pass instead.
    """
    if override:
        if fs.path(override).is_dir():
            return WordPieceAdapter(override, do_lower_case)
        return SentencePieceAdapter(override)
    found = rundir.resolve(init_from).tokenizer()
    if found is None or not fs.path(found[1]).exists():
        raise DataError(
            f"config.init_from={init_from}: found no tokenizer (no vocab.txt there, and "
            f"{'no' if found is None else 'a missing'} sentencepiece model in the data directory "
            "its saved config names); pass --config.tokenizer=PATH (a sentencepiece .model or a "
            "dir with vocab.txt)")
    kind, path = found
    if kind == "wordpiece":
        return WordPieceAdapter(path, do_lower_case)
    return SentencePieceAdapter(path)


def encode(examples: Sequence[dict[str, Any]], tok: TaskTokenizer, max_length: int,
           regression: bool = False) -> dict[str, np.ndarray]:
    """Featurises reader examples.

    Args:
      examples: [{"text_a", "text_b" (None for single sentences), "label"}].
      tok: see ``load_tokenizer``.
      max_length: L, including [CLS] and the [SEP]s.
      regression: labels are floats (else class ids; None labels become -1 / nan).

    Returns:
      input_ids, input_mask, segment_ids int32 [N, L]; label int32 or float32 [N].
    """
    n = len(examples)
    ids_a = tok.encode_batch([e["text_a"] for e in examples])
    pair = n > 0 and examples[0].get("text_b") is not None
    ids_b = tok.encode_batch([e["text_b"] or "" for e in examples]) if pair else [None] * n
    out = {k: np.zeros((n, max_length), np.int32) for k in FEATURE_KEYS}
    out["input_ids"][:] = tok.pad_id
    for i, (a, b) in enumerate(zip(ids_a, ids_b)):
        ids, seg = wordpiece.pack_pair(a, b, max_length, tok.cls_id, tok.sep_id)
        out["input_ids"][i, :len(ids)] = ids
        out["input_mask"][i, :len(ids)] = 1
        out["segment_ids"][i, :len(ids)] = seg
    if regression:
        out["label"] = np.array([np.nan if e["label"] is None else e["label"]
                                 for e in examples], np.float32)
    else:
        out["label"] = np.array([-1 if e["label"] is None else e["label"] for e in examples],
                                np.int32)
    return out

