"""SQuAD v1.1 / v2.0: scoring, sliding windows over long contexts, and answer-span decoding.

Scoring follows the official evaluation scripts as documented: answers are normalised (lower
case, punctuation removed, the articles a/an/the removed, whitespace collapsed); a question's
exact match and token F1 are the maxima over its gold answers; a v2.0 question with no answer
has the single gold answer "" which only an empty prediction matches. Scores are percentages.

A context longer than the model's budget is covered by overlapping windows of context tokens
(`windows`). A token seen by several windows is "owned" by the window where it has the most
context on both sides (`max_context_windows`); decoding only accepts answers that start at a
token owned by the window the start logit came from, so every span is judged once, in its best
light.

Decoding (`decode`) scores every valid span (start ≤ end, within `max_answer_length` tokens, on
context tokens, start owned by the window) as start_logit + end_logit, exhaustively per window
(vectorised; cheaper than it sounds at 384 tokens and never misses a span that a top-k prefilter
would). The v2.0 null score is start[CLS] + end[CLS], minimised over windows; the question is
predicted unanswerable when null_score − best_span_score > threshold, and `best_thresholds`
picks that threshold on a dev set.

The sequence layout assumed is BERT's: [CLS] question [SEP] context-window [SEP] (padding), so
each window's context occupies consecutive positions starting at a known `context_start`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
import string
from typing import Any, Mapping, Sequence

import numpy as np

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


# ----------------------------------------------------------------------------------- scoring


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lower, drop punctuation, drop articles, collapse whitespace.

    The order matters and is the official one: punctuation goes before articles so "the," loses
    its comma and then its article.

    Args:
      text: an answer string.

    Returns:
      The normalised string.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 if the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 of normalised strings; two empty strings score 1 (v2.0 no-answer).

    Args:
      prediction: predicted answer.
      gold: one gold answer.

    Returns:
      F1 in [0, 1].
    """
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        # An empty side only matches another empty side (no-answer vs. empty prediction).
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def gold_answers(qa: Mapping[str, Any]) -> list[str]:
    """The gold answer texts of one SQuAD question; [""] for a v2.0 question without answer.

    Answers that normalise to nothing are dropped, as the official v2.0 script does.

    Args:
      qa: a question dict from the dataset JSON (keys "answers", optionally "is_impossible").

    Returns:
      The list of gold strings (never empty).
    """
    golds = [a["text"] for a in qa.get("answers", []) if normalize_answer(a["text"])]
    return golds or [""]


def score_prediction(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) of one prediction: each the maximum over the gold answers."""
    return (max(exact_match(prediction, g) for g in golds),
            max(token_f1(prediction, g) for g in golds))


def _questions(dataset: Mapping[str, Any] | Sequence[Mapping[str, Any]]):
    """Yields (id, gold answers, has_answer) for every question of a SQuAD JSON."""
    articles = dataset["data"] if isinstance(dataset, Mapping) else dataset
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                golds = gold_answers(qa)
                yield qa["id"], golds, golds != [""]


def evaluate(dataset: Mapping[str, Any] | Sequence[Mapping[str, Any]],
             predictions: Mapping[str, str],
             null_odds: Mapping[str, float] | None = None,
             null_threshold: float = 0.0) -> dict[str, float]:
    """Official-style SQuAD scores of `predictions` on `dataset`.

    Unlike the official v2.0 script (which skips them) a question without a prediction scores 0,
    as in v1.1: a partial prediction file must not look better than a full one.

    Args:
      dataset: the parsed dataset JSON ({"data": [...]}) or its "data" list.
      predictions: question id -> predicted answer text ("" = no answer).
      null_odds: optional question id -> null_score − best_span_score; where it exceeds
        `null_threshold` the prediction is replaced by "" before scoring.
      null_threshold: see `null_odds`.

    Returns:
      {"exact", "f1", "total"} plus "HasAns_exact/f1/total" and "NoAns_exact/f1/total" for the
      groups that occur, and "missing" (questions without a prediction).
    """
    groups: dict[str, list[tuple[float, float]]] = {"HasAns": [], "NoAns": []}
    missing = 0
    for qid, golds, has_answer in _questions(dataset):
        if qid not in predictions:
            missing += 1
            scores = (0.0, 0.0)
        else:
            pred = predictions[qid]
            if null_odds is not None and null_odds[qid] > null_threshold:
                pred = ""
            scores = score_prediction(pred, golds)
        groups["HasAns" if has_answer else "NoAns"].append(scores)
    everything = groups["HasAns"] + groups["NoAns"]
    if not everything:
        raise ValueError("the dataset has no questions")
    result: dict[str, float] = {}
    for prefix, items in (("", everything), ("HasAns_", groups["HasAns"]),
                          ("NoAns_", groups["NoAns"])):
        if items:
            result[prefix + "exact"] = 100.0 * sum(e for e, _ in items) / len(items)
            result[prefix + "f1"] = 100.0 * sum(f for _, f in items) / len(items)
            result[prefix + "total"] = len(items)
    result["missing"] = missing
    return result


def best_thresholds(dataset: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                    predictions: Mapping[str, str],
                    null_odds: Mapping[str, float]) -> dict[str, float]:
    """The null thresholds maximising exact match and F1 on a (dev) set.

    Every threshold is equivalent to one cut in the questions sorted by null odds: those at or
    below the cut are answered with their best span, those above get "". Starting from "all
    unanswered" (each no-answer question scores 1), moving a question across the cut changes the
    total by (its answered score − its null score). Questions with equal odds cross together,
    since no threshold separates them. The lowest best threshold is kept. A question without a
    prediction scores 0 at every threshold and counts in the total, as in `evaluate`, so the
    best score is what `evaluate` gives at the best threshold.

    Args:
      dataset: the parsed dataset JSON or its "data" list.
      predictions: question id -> best non-null answer text.
      null_odds: question id -> null_score − best_span_score, for every predicted question.

    Returns:
      {"best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"} (scores in percent).
    """
    items = []  # (odds, gain_exact, gain_f1)
    base = 0.0
    total = 0
    for qid, golds, has_answer in _questions(dataset):
        total += 1
        if qid in predictions:  # a question without a prediction scores 0, as in `evaluate`
            null_score = 0.0 if has_answer else 1.0
            base += null_score
            em, f1 = score_prediction(predictions[qid], golds)
            items.append((float(null_odds[qid]), em - null_score, f1 - null_score))
    items.sort(key=lambda x: x[0])
    odds = np.array([x[0] for x in items])
    result = {}
    for name, column in (("exact", 1), ("f1", 2)):
        gains = np.cumsum([x[column] for x in items])
        # A cut is only possible after the last question of a run of equal odds.
        last_of_run = np.append(odds[1:] != odds[:-1], True) if len(items) else np.array([], bool)
        best_score, best_thresh = base, (float(np.nextafter(odds[0], -np.inf)) if len(items)
                                         else 0.0)
        if len(items):
            candidates = np.where(last_of_run, base + gains, -np.inf)
            i = int(np.argmax(candidates))
            if candidates[i] > best_score:
                best_score, best_thresh = float(candidates[i]), float(odds[i])
        result[f"best_{name}"] = 100.0 * best_score / total
        result[f"best_{name}_thresh"] = best_thresh
    return result


# ---------------------------------------------------------------------------- sliding windows


def windows(context_token_count: int, max_context_tokens: int,
            doc_stride: int) -> list[tuple[int, int]]:
    """Overlapping windows (start, length) of context tokens covering the whole context.

    Each window starts `doc_stride` tokens after the previous one (or fewer if the previous one
    was shorter, so no token is skipped when stride > window) and the last one ends exactly at
    the context's end. An empty context still gets one empty window so that its question yields
    a feature (and decodes to "").

    Args:
      context_token_count: number of context tokens.
      max_context_tokens: tokens per window (sequence length minus question and specials).
      doc_stride: distance between window starts.

    Returns:
      [(start, length), ...] in order.
    """
    if max_context_tokens < 1 or doc_stride < 1:
        raise ValueError(f"max_context_tokens and doc_stride must be >= 1, got "
                         f"{max_context_tokens} and {doc_stride}; lower the question length or "
                         f"raise the sequence length")
    if context_token_count <= 0:
        return [(0, 0)]
    spans = []
    start = 0
    while True:
        length = min(context_token_count - start, max_context_tokens)
        spans.append((start, length))
        if start + length >= context_token_count:
            return spans
        start += min(length, doc_stride)


def max_context_windows(spans: Sequence[tuple[int, int]], context_token_count: int) -> np.ndarray:
    """For each context token, the index of the window where it has the most context.

    A token's score in a window is min(tokens left of it, tokens right of it) plus 0.01 × the
    window's length (so among equally centred windows a longer one wins); the earliest window
    wins exact ties.

    Args:
      spans: windows as returned by `windows`.
      context_token_count: number of context tokens.

    Returns:
      [context_token_count] int array of window indices.
    """
    best = np.full(context_token_count, -1, dtype=np.int64)
    best_score = np.full(context_token_count, -np.inf)
    for w, (start, length) in enumerate(spans):
        pos = np.arange(start, start + length)
        score = np.minimum(pos - start, start + length - 1 - pos) + 0.01 * length
        better = score > best_score[pos]  # strict: earlier windows keep ties
        best[pos[better]] = w
        best_score[pos[better]] = score[better]
    return best


# ------------------------------------------------------------------------------ training targets


def char_span_to_tokens(offsets: Sequence[tuple[int, int]], char_start: int,
                        char_end: int) -> tuple[int, int] | None:
    """The context tokens (first, last inclusive) overlapping characters [char_start, char_end).

    Args:
      offsets: per context token its (start, end) character offsets, end exclusive.
      char_start: answer start character.
      char_end: answer end character (exclusive), i.e. answer_start + len(text).

    Returns:
      (first token, last token), or None if no token overlaps the answer.
    """
    hits = [i for i, (s, e) in enumerate(offsets) if s < char_end and e > char_start]
    return (hits[0], hits[-1]) if hits else None


def window_targets(answer_tokens: tuple[int, int] | None, span: tuple[int, int],
                   context_start: int, null_index: int = 0) -> tuple[int, int]:
    """Start/end position labels of one window: the answer if wholly inside, else [CLS].

    Args:
      answer_tokens: (first, last) context token of the answer, None for no answer.
      span: the window (start, length).
      context_start: sequence position of the window's first context token.
      null_index: position of [CLS].

    Returns:
      (start position, end position) in the window's sequence.
    """
    start, length = span
    if answer_tokens is None or answer_tokens[0] < start or answer_tokens[1] >= start + length:
        return null_index, null_index
    return (answer_tokens[0] - start + context_start, answer_tokens[1] - start + context_start)


# ----------------------------------------------------------------------------------- decoding


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One decoded answer: its text, character span in the context, score and n-best prob."""
    text: str
    score: float
    start_char: int
    end_char: int
    probability: float = 0.0


@dataclasses.dataclass(frozen=True)
class Answer:
    """Decoding result for one question.

    Attributes:
      text: the prediction ("" when v2.0 decides there is no answer).
      best_span: text of the best non-null span ("" if no valid span exists).
      nbest: up to n_best candidates by descending score (with the null "" in v2.0), with
        softmax probabilities over the listed scores.
      null_score: start[CLS] + end[CLS] minimised over windows (v2.0), else None.
      null_odds: null_score − best span score (v2.0; +inf if no span), the quantity compared
        with the threshold and fed to `best_thresholds`; None for v1.1.
    """
    text: str
    best_span: str
    nbest: list[Candidate]
    null_score: float | None
    null_odds: float | None


def decode(start_logits: Sequence[np.ndarray], end_logits: Sequence[np.ndarray],
           spans: Sequence[tuple[int, int]], context_starts: Sequence[int] | int, context: str,
           offsets: Sequence[tuple[int, int]], *, max_answer_length: int = 30, n_best: int = 20,
           version_2: bool = False, null_threshold: float = 0.0,
           null_index: int = 0) -> Answer:
    """Best answer span of one question from the logits of all its windows.

    Args:
      start_logits: per window a [L] array of start logits over the whole sequence.
      end_logits: per window a [L] array of end logits.
      spans: per window its (start, length) in context tokens (from `windows`).
      context_starts: per window (or one for all) the sequence position of its first context
        token, e.g. 2 + question tokens for [CLS] q [SEP] ctx.
      context: the context string.
      offsets: per context token its (start, end) character offsets in `context`.
      max_answer_length: longest answer in tokens.
      n_best: number of candidates kept in `nbest`.
      version_2: allow "no answer" (SQuAD v2.0).
      null_threshold: predict "" when null_score − best span score exceeds this.
      null_index: sequence position of [CLS].

    Returns:
      The Answer.
    """
    if not (len(start_logits) == len(end_logits) == len(spans)):
        raise ValueError(f"got {len(start_logits)} start, {len(end_logits)} end logit arrays and "
                         f"{len(spans)} windows; one of each per window is needed")
    if isinstance(context_starts, int):
        context_starts = [context_starts] * len(spans)
    owner = max_context_windows(spans, len(offsets))
    found: list[tuple[float, int, int]] = []  # (score, first token, last token)
    null_score = math.inf
    for w, (start, length) in enumerate(spans):
        s_all = np.asarray(start_logits[w], dtype=np.float64)  # [L]
        e_all = np.asarray(end_logits[w], dtype=np.float64)  # [L]
        null_score = min(null_score, s_all[null_index] + e_all[null_index])
        cs = context_starts[w]
        length = min(length, len(s_all) - cs)  # a truncated sequence cannot hold more
        if length <= 0:
            continue
        s, e = s_all[cs:cs + length], e_all[cs:cs + length]  # [n] over window's context tokens
        i = np.arange(length)
        valid = ((i[None, :] >= i[:, None]) & (i[None, :] - i[:, None] < max_answer_length)
                 & (owner[start + i] == w)[:, None])  # [n, n] rows start, cols end
        score = np.where(valid, s[:, None] + e[None, :], -np.inf)
        flat = score.ravel()
        # Spare candidates because distinct spans may share a text and get deduplicated.
        k = min(int(valid.sum()), 2 * n_best)
        if k == 0:
            continue
        top = np.argpartition(-flat, k - 1)[:k]
        for idx in top:
            a, b = divmod(int(idx), length)
            found.append((float(flat[idx]), start + a, start + b))
    found.sort(key=lambda x: -x[0])
    nbest: list[Candidate] = []
    seen: set[str] = set()
    for score, a, b in found:
        text = context[offsets[a][0]:offsets[b][1]]
        if not text.strip() or text in seen:  # empty text is reserved for "no answer"
            continue
        seen.add(text)
        nbest.append(Candidate(text, score, offsets[a][0], offsets[b][1]))
        if len(nbest) == n_best:
            break
    best_span = nbest[0].text if nbest else ""
    best_score = nbest[0].score if nbest else -math.inf
    text, odds, null = best_span, None, None
    if version_2:
        null = float(null_score)
        odds = null - best_score
        if odds > null_threshold:
            text = ""
        # The null answer is always listed, in place of the weakest span if the list is full.
        nbest = sorted(nbest[:max(n_best - 1, 0)] + [Candidate("", null, -1, -1)],
                       key=lambda c: -c.score)
    if nbest:
        scores = np.array([c.score for c in nbest])
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        nbest = [dataclasses.replace(c, probability=float(p)) for c, p in zip(nbest, probs)]
    return Answer(text=text, best_span=best_span, nbest=nbest, null_score=null, null_odds=odds)
