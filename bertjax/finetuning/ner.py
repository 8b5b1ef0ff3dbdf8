"""Named-entity recognition: tag schemes, entity spans, entity-level scores, sub-token alignment.

Entity decoding follows conlleval (and seqeval's default, non-strict mode), which reads IOB1,
IOB2 (BIO) and IOBES with one rule set, so scores match the numbers papers report for CoNLL-2003:

  * a chunk ends when the previous tag was E- or S-, when the current tag is B-, S- or O, or
    when the entity type changes;
  * a chunk starts at any B- or S-, at an I-/E- following O, E- or S- (or the sentence start),
    and wherever the type changes.

So "O I-LOC" is a LOC entity (an I- starting an entity, as IOB1 writes every entity not directly
after one of the same type), and IOB1's "I-PER B-PER" is two PER entities. `strict=` instead
accepts only well-formed chunks of one scheme (seqeval's strict mode): a stray I- is dropped.

Entities are (type, start, end) with `end` exclusive, in word positions of one sentence.

Models see sub-tokens; only the first sub-token of each word carries the word's label
(`align_labels`, with -100 elsewhere so the loss ignores it) and is read back for the word's
prediction (`word_predictions`). `word_ids` follow the usual convention: per token the index
of its word, None (or any negative number) for [CLS]/[SEP]/padding.
"""

from __future__ import annotations

import collections
import io
import os
from typing import Iterable, Sequence, TextIO

import numpy as np

from bertjax.data import fs

IGNORE_INDEX = -100
Entity = tuple[str, int, int]


def split_tag(tag: str) -> tuple[str, str]:
    """("B", "PER") for "B-PER"; ("O", "") for "O"; a bare "B"/"I" has the empty type."""
    if tag == "O" or not tag:
        return "O", ""
    prefix, _, etype = tag.partition("-")
    return prefix.upper(), etype


def entities(tags: Sequence[str]) -> list[Entity]:
    """Entity spans of one sentence under conlleval rules (any of IOB1, IOB2, IOBES).

    Args:
      tags: per word its tag, e.g. ["B-PER", "I-PER", "O"].

    Returns:
      [(type, start, end exclusive), ...] in order.
    """
    found: list[Entity] = []
    prev_tag, prev_type, start = "O", "", None
    for i, tag in enumerate(list(tags) + ["O"]):  # a final O closes an open chunk
        cur_tag, cur_type = split_tag(tag)
        if start is not None and (prev_tag in ("E", "S") or cur_tag in ("B", "S", "O")
                                  or cur_type != prev_type):
            found.append((prev_type, start, i))
            start = None
        if cur_tag != "O" and (cur_tag in ("B", "S") or prev_tag in ("E", "S", "O")
                               or cur_type != prev_type or start is None):
            start = i
        prev_tag, prev_type = cur_tag, cur_type
    return found


def strict_entities(tags: Sequence[str], scheme: str = "IOB2") -> list[Entity]:
    """Entity spans accepting only well-formed chunks of `scheme` (seqeval strict mode).

    IOB2: B-X followed by I-X*. IOBES: S-X, or B-X I-X* E-X. Anything else is not an entity.

    Args:
      tags: per word its tag.
      scheme: "IOB2" or "IOBES".

    Returns:
      [(type, start, end exclusive), ...] in order.
    """
    scheme = scheme.upper()
    if scheme not in ("IOB2", "IOBES"):
        raise ValueError(f"strict decoding supports IOB2 or IOBES, got {scheme!r}")
    parsed = [split_tag(t) for t in tags]
    found: list[Entity] = []
    i = 0
    while i < len(parsed):
        prefix, etype = parsed[i]
        if scheme == "IOBES" and prefix == "S":
            found.append((etype, i, i + 1))
        elif prefix == "B":
            j = i + 1
            while j < len(parsed) and parsed[j] == ("I", etype):
                j += 1
            if scheme == "IOB2":
                found.append((etype, i, j))
                i = j
                continue
            if j < len(parsed) and parsed[j] == ("E", etype):
                found.append((etype, i, j + 1))
                i = j + 1
                continue
        i += 1
    return found


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """Rewrites IOB1 tags (B- only between adjacent same-type entities) as IOB2 (B- everywhere).

    CoNLL-2003's original files are IOB1; models are usually trained on IOB2 so that the first
    word of every entity has the same tag. The entities are unchanged.

    Args:
      tags: IOB1 tags of one sentence.

    Returns:
      IOB2 tags.
    """
    out = []
    prev_prefix, prev_type = "O", ""
    for tag in tags:
        prefix, etype = split_tag(tag)
        if prefix == "I" and (prev_prefix == "O" or prev_type != etype):
            tag = f"B-{etype}"
        out.append(tag)
        prev_prefix, prev_type = prefix, etype
    return out


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                  strict: str | None = None) -> dict:
    """Micro precision/recall/F1 over entities, and the same per entity type.

    An entity counts as correct only if type, start and end all match.

    Args:
      gold: per sentence the gold tags.
      pred: per sentence the predicted tags (same lengths as gold).
      strict: None for conlleval rules, or "IOB2"/"IOBES" for strict decoding.

    Returns:
      {"precision", "recall", "f1", "per_type": {type: {"precision", "recall", "f1",
      "support"}}} with support = number of gold entities of that type.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted ones")
    decode = entities if strict is None else (lambda t: strict_entities(t, strict))
    n_gold: collections.Counter = collections.Counter()
    n_pred: collections.Counter = collections.Counter()
    n_ok: collections.Counter = collections.Counter()
    for k, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {k}: {len(g)} gold tags but {len(p)} predicted tags")
        g_set, p_set = set(decode(g)), set(decode(p))
        for etype, _, _ in g_set:
            n_gold[etype] += 1
        for etype, _, _ in p_set:
            n_pred[etype] += 1
        for etype, _, _ in g_set & p_set:
            n_ok[etype] += 1

    def prf(ok: int, predicted: int, true: int) -> tuple[float, float, float]:
        precision = ok / predicted if predicted else 0.0
        recall = ok / true if true else 0.0
        f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return precision, recall, f

    precision, recall, f = prf(sum(n_ok.values()), sum(n_pred.values()), sum(n_gold.values()))
    per_type = {}
    for etype in sorted(set(n_gold) | set(n_pred)):
        tp, tr, tf = prf(n_ok[etype], n_pred[etype], n_gold[etype])
        per_type[etype] = {"precision": tp, "recall": tr, "f1": tf, "support": n_gold[etype]}
    return {"precision": precision, "recall": recall, "f1": f, "per_type": per_type}


def _word(w) -> int | None:
    return None if w is None or int(w) < 0 else int(w)


def align_labels(word_labels: Sequence[int], word_ids: Sequence[int | None],
                 ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Token label ids: the word's label on its first sub-token, `ignore_index` elsewhere.

    Args:
      word_labels: per word its label id.
      word_ids: per token its word index; None or negative for special tokens and padding.
      ignore_index: the label the loss skips.

    Returns:
      [num_tokens] int32 label ids.
    """
    out = np.full(len(word_ids), ignore_index, dtype=np.int32)
    prev = None
    for t, w in enumerate(word_ids):
        w = _word(w)
        if w is not None and w != prev:
            if w >= len(word_labels):
                raise ValueError(f"token {t} belongs to word {w} but there are only "
                                 f"{len(word_labels)} word labels")
            out[t] = word_labels[w]
        prev = w
    return out


def word_predictions(token_predictions: Sequence, word_ids: Sequence[int | None],
                     num_words: int | None = None, fill=None) -> list:
    """Per word the prediction at its first sub-token (the inverse of `align_labels`).

    Args:
      token_predictions: per token a predicted label (id or string).
      word_ids: per token its word index; None or negative for special tokens and padding.
      num_words: number of words in the sentence (default: last word seen + 1).
      fill: prediction for words without any token (cut off by the sequence length); if None
        such a word is an error.

    Returns:
      [num_words] predictions.
    """
    first: dict[int, object] = {}
    for t, w in enumerate(word_ids):
        w = _word(w)
        if w is not None and w not in first:
            first[w] = token_predictions[t]
    if num_words is None:
        num_words = max(first) + 1 if first else 0
    out = []
    for w in range(num_words):
        if w not in first and fill is None:
            raise ValueError(f"word {w} of {num_words} has no token (truncated by the sequence "
                             f"length?); pass fill= (e.g. the id of 'O') to predict it anyway")
        out.append(first.get(w, fill))
    return out


def write_conll(out: str | os.PathLike | TextIO, words: Iterable[Sequence[str]],
                gold: Iterable[Sequence[str]], pred: Iterable[Sequence[str]]) -> None:
    """Writes "word gold pred" lines, a blank line after each sentence (conlleval's input).

    Args:
      out: a path or an open text file.
      words: per sentence its words.
      gold: per sentence the gold tags.
      pred: per sentence the predicted tags.
    """
    buf = io.StringIO()
    for k, (ws, gs, ps) in enumerate(zip(words, gold, pred, strict=True)):
        if not len(ws) == len(gs) == len(ps):
            raise ValueError(f"sentence {k}: {len(ws)} words, {len(gs)} gold tags, "
                             f"{len(ps)} predicted tags; they must match")
        for w, g, p in zip(ws, gs, ps):
            if not w or any(ch.isspace() for ch in w):
                raise ValueError(f"sentence {k}: word {w!r} is empty or holds whitespace, which "
                                 f"would break the space-separated CoNLL columns")
            buf.write(f"{w} {g} {p}\n")
        buf.write("\n")
    if isinstance(out, (str, os.PathLike)):
        fs.path(out).write_text(buf.getvalue())  # UTF-8, local or gs://
    else:
        out.write(buf.getvalue())
