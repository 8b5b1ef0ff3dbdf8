"""SQuAD questions -> windowed model rows, with the character offsets that map answers back.

Each context is split at whitespace into words (exact character spans), each word is tokenised
on its own (both tokenizers bertjax uses split at whitespace first, so the ids equal those of
the whole text) and its pieces are aligned to the word's characters (``align_pieces``): the
piece texts (``token_texts``: WordPiece without "##", sentencepiece without "▁") are compared
with the word after the same folding both tokenizers may apply (compatibility decomposition,
accents dropped, lower case), one original character per folded character. [UNK] pieces take
the characters between their neighbours; a word whose pieces cannot be aligned gives every
piece the whole word, so an answer inside it comes back as the whole word, never as garbage.

A question becomes one row per window (``squad.windows``) laid out as
``[CLS] question [SEP] context-window [SEP]``, the question cut to ``max_query_length`` tokens.
The targets are the answer's first and last token in the window, or [CLS] (position 0) when
the window does not hold the whole answer or the question has none (SQuAD v2.0).

Neither JAX nor TensorFlow is imported here.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Any, Sequence

import numpy as np

from bertjax.data.errors import DataError
from bertjax.finetuning import features
from bertjax.finetuning import squad

Offsets = list[tuple[int, int]]
_WORD = re.compile(r"\S+")


# ------------------------------------------------------------------------------------ offsets


def _fold(text: str) -> str:
    """What a tokenizer may have made of ``text``: NFKD, combining marks and control
    characters dropped, lower case (applied alike to the word and to its pieces)."""
    out = []
    for ch in unicodedata.normalize("NFKD", text):
        cat = unicodedata.category(ch)
        if cat == "Mn" or cat[0] == "C" or ch.isspace():
            continue
        out.append(ch.lower())
    return "".join(out)


def align_pieces(word: str, pieces: Sequence[str | None]) -> Offsets | None:
    """Character spans (start, end exclusive) of each piece of one whitespace-free word.

    Args:
      word: the word as it is in the context.
      pieces: per piece its text without word marks, None for an unknown token.

    Returns:
      One (start, end) per piece, relative to ``word``; None when the pieces do not spell the
      word (the caller then gives every piece the whole word). A piece with no text (a bare
      "▁") gets the empty span where the next text starts.
    """
    if word.isascii() and word.isprintable():  # most words: folding is lower-casing
        stream, owner = word.lower(), list(range(len(word) + 1))
    else:
        folded, owner = [], []  # folded characters, and the original character of each
        for i, ch in enumerate(word):
            for f in _fold(ch):
                folded.append(f)
                owner.append(i)
        stream = "".join(folded)
        owner.append(len(word))  # a match ending at the stream's end ends at the word's end
    spans: Offsets = []
    pending: list[int] = []  # [UNK] pieces waiting for the next matched piece
    pos = 0
    for k, piece in enumerate(pieces):
        if piece is None:
            pending.append(k)
            spans.append((0, 0))
            continue
        text = piece.lower() if piece.isascii() and piece.isprintable() else _fold(piece)
        if not text:
            spans.append((owner[pos], owner[pos]))
            continue
        found = stream.find(text, pos)
        if found < 0 or (found > pos and not pending):  # pieces skip characters: no match
            return None
        for j in pending:  # unknown pieces cover what lies between their neighbours
            spans[j] = (owner[pos], owner[found])
        pending = []
        spans.append((owner[found], owner[found + len(text) - 1] + 1))
        pos = found + len(text)
    if not pending and pos < len(stream):
        return None
    for j in pending:
        spans[j] = (owner[pos], len(word))
    return spans


def whitespace_words(text: str) -> Offsets:
    """(start, end) of every maximal run of non-whitespace characters of ``text`` (whitespace
    as str.isspace has it, which covers BERT's and sentencepiece's)."""
    return [m.span() for m in _WORD.finditer(text)]


def tokenize_with_offsets(texts: Sequence[str], tok: features.TaskTokenizer
                          ) -> list[tuple[list[int], np.ndarray]]:
    """Token ids of each text with per-token character offsets into it.

    Args:
      texts: contexts.
      tok: a task tokenizer with ``encode_batch`` and ``token_texts``.

    Returns:
      Per text (ids, offsets int64 [T, 2] with end exclusive).
    """
    words = [whitespace_words(t) for t in texts]
    flat = [t[s:e] for t, ws in zip(texts, words) for s, e in ws]
    ids = tok.encode_batch(flat) if flat else []
    out, k = [], 0
    for ws in words:
        text_ids: list[int] = []
        offsets: Offsets = []
        for s, e in ws:
            word_ids = ids[k]
            k += 1
            spans = align_pieces(flat[k - 1], tok.token_texts(word_ids)) if word_ids else []
            if spans is None:
                spans = [(0, e - s)] * len(word_ids)
            text_ids.extend(word_ids)
            offsets.extend((s + a, s + b) for a, b in spans)
        out.append((text_ids, np.array(offsets, np.int64).reshape(-1, 2)))
    return out


# ------------------------------------------------------------------------------------ windows


@dataclasses.dataclass
class Question:
    """What decoding and scoring need about one question (its rows are ``first:first+count``)."""

    id: str
    context: str
    offsets: np.ndarray  # [T, 2] character span of each context token
    spans: list[tuple[int, int]]  # the windows, (first context token, length)
    context_start: int  # sequence position of each window's first context token
    first: int
    count: int
    answers: list[dict]
    is_impossible: bool


@dataclasses.dataclass
class Featurised:
    """Rows (input_ids, input_mask, segment_ids, start_positions, end_positions) and
    questions; ``unlocated`` counts answers not found in their context, whose windows target
    [CLS] (only in evaluation sets: bertjax.finetuning.qa refuses a training set with one)."""

    arrays: dict[str, np.ndarray]
    questions: list[Question]
    unlocated: int = 0


def answer_chars(context: str, answer: dict) -> tuple[int, int] | None:
    """[start, end) of an answer in the context: at its answer_start when the text is there,
    else its occurrence nearest to answer_start (some SQuAD offsets are off by a few), else
    None."""
    text, start = answer["text"], int(answer["answer_start"])
    if not text.strip():
        return None
    if context[start:start + len(text)] == text:
        return start, start + len(text)
    hits, at = [], context.find(text)
    while at >= 0:
        hits.append(at)
        at = context.find(text, at + 1)
    if not hits:
        return None
    best = min(hits, key=lambda h: abs(h - start))
    return best, best + len(text)


def featurise(examples: Sequence[dict[str, Any]], tok: features.TaskTokenizer,
              max_seq_length: int, max_query_length: int, doc_stride: int,
              where: str = "") -> Featurised:
    """Windowed rows of SQuAD questions (reader dicts of bertjax.data.tasks.read_squad).

    Args:
      examples: [{"id", "context", "question", "answers", "is_impossible"}].
      tok: the task tokenizer.
      max_seq_length: L.
      max_query_length: question tokens kept (the rest cut).
      doc_stride: context tokens between window starts.
      where: the source, for error messages.

    Returns:
      The rows (int32 [N, L] features, int32 [N] targets) and the questions.

    Raises:
      DataError: the question and specials leave no room for context.
    """
    n_q = len(examples)
    questions_ids = tok.encode_batch([e["question"] for e in examples]) if n_q else []
    unique = list(dict.fromkeys(e["context"] for e in examples))
    tokenised = dict(zip(unique, tokenize_with_offsets(unique, tok)))
    rows: list[tuple[list[int], int, int, int]] = []  # ids, context start, start, end target
    questions: list[Question] = []
    unlocated = 0
    for e, q_ids in zip(examples, questions_ids):
        q_ids = q_ids[:max_query_length]
        ctx_ids, offsets = tokenised[e["context"]]
        budget = max_seq_length - len(q_ids) - 3
        if budget < 1:
            raise DataError(f"{where}: question {e['id']!r} leaves no room for context in "
                            f"max_seq_length={max_seq_length}; raise it above "
                            f"max_query_length + 3")
        spans = squad.windows(len(ctx_ids), budget, doc_stride)
        answer_tokens = None
        if e["answers"] and not e["is_impossible"]:
            chars = answer_chars(e["context"], e["answers"][0])
            answer_tokens = (squad.char_span_to_tokens(offsets.tolist(), *chars)
                             if chars else None)
            unlocated += answer_tokens is None
        context_start = len(q_ids) + 2
        questions.append(Question(str(e["id"]), e["context"], offsets, spans, context_start,
                                  len(rows), len(spans), e["answers"], e["is_impossible"]))
        for start, length in spans:
            ids = ([tok.cls_id] + list(q_ids) + [tok.sep_id] + list(ctx_ids[start:start + length])
                   + [tok.sep_id])
            s, t = squad.window_targets(answer_tokens, (start, length), context_start)
            rows.append((ids, context_start, s, t))
    n = len(rows)
    arrays = {k: np.zeros((n, max_seq_length), np.int32) for k in features.FEATURE_KEYS}
    arrays["input_ids"][:] = tok.pad_id
    arrays["start_positions"] = np.zeros(n, np.int32)
    arrays["end_positions"] = np.zeros(n, np.int32)
    for i, (ids, context_start, s, t) in enumerate(rows):
        arrays["input_ids"][i, :len(ids)] = ids
        arrays["input_mask"][i, :len(ids)] = 1
        arrays["segment_ids"][i, context_start:len(ids)] = 1
        arrays["start_positions"][i], arrays["end_positions"][i] = s, t
    return Featurised(arrays, questions, unlocated)
