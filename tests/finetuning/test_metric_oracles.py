"""bertjax's metric code against the reference libraries, used as oracles on randomised inputs.

  * accuracy / F1 / Matthews correlation (metrics.py)   vs scikit-learn;
  * Pearson / Spearman (metrics.py)                      vs scipy.stats;
  * NER entities and entity P/R/F1 (ner.py)              vs seqeval (default mode = conlleval
    rules; strict mode with the IOB2 / IOBES schemes; IOB1 only in the default mode, which on
    well-formed IOB1 equals seqeval's strict IOB1);
  * SQuAD EM/F1, evaluate and the v2.0 threshold search (squad.py) vs transformers'
    squad_metrics (a port of the official v2.0 evaluation script).

Every draw has a fixed seed; each test runs 50 to 1,800 draws plus the edge cases (one class,
constant predictions, ties, empty sentences and sentences without entities, answers that
normalise to nothing, ...). The oracles are test extras only (requirements-test.txt).

Intended differences from the references, each tested by hand in
`test_squad_intended_differences_by_hand` (the NER modes' documented difference in
`test_ner_strict_differs_from_default_by_hand`):

  * SQuAD, a question without a prediction scores 0 and stays in the totals (bertjax's
    `evaluate` and, likewise, `best_thresholds`); the official script and transformers leave it
    out of the overall total (and fail with a KeyError on their HasAns/NoAns totals).
  * SQuAD v2.0 threshold search: questions with equal null odds cross the threshold together
    (no threshold separates them); transformers walks them one at a time and can report a score
    that no threshold gives. When no cut beats "all null" bertjax returns a threshold just below
    every odds (which gives "all null"); transformers returns 0.0 (which does not if odds < 0).
  * SQuAD v2.0 threshold search: a no-answer question whose prediction normalises to nothing
    ("the", ".") is scored as the empty answer it is (EM 1), consistently with `evaluate`;
    transformers' search counts any non-empty string as a wrong answer there.
  * SQuAD v2.0 grouping: a question whose every answer normalises to nothing is "NoAns" in
    bertjax (its only gold is ""); transformers (and the official script) file it under HasAns
    while also scoring it against "".
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics as skm
from seqeval.metrics import sequence_labeling as seq_default
from seqeval.metrics import v1 as seq_v1
from seqeval.scheme import IOB1, IOB2, IOBES, Tokens
from transformers.data.metrics import squad_metrics as hf
from transformers.data.processors.squad import SquadExample

from bertjax.finetuning import metrics, ner, squad

DRAWS = 300


# ------------------------------------------------------------------ classification: sklearn


def _class_draws(seed: int):
    """(predictions, labels) pairs: random sizes and class counts, then the edge cases."""
    rng = np.random.default_rng(seed)
    for _ in range(DRAWS):
        n = int(rng.integers(1, 60))
        k = int(rng.integers(2, 6))
        y = rng.integers(0, k, n)
        kind = rng.integers(0, 4)
        if kind == 0:  # independent predictions
            p = rng.integers(0, k, n)
        elif kind == 1:  # mostly right
            p = np.where(rng.random(n) < 0.8, y, rng.integers(0, k, n))
        elif kind == 2:  # constant prediction
            p = np.full(n, rng.integers(0, k))
        else:  # labels of one class only
            y = np.full(n, rng.integers(0, k))
            p = rng.integers(0, k, n)
        yield p, y
    y = np.array([0, 1, 1, 0, 2, 2])
    yield y.copy(), y  # perfect
    yield (y + 1) % 3, y  # all wrong
    yield np.zeros(5, int), np.zeros(5, int)  # one class on both sides
    yield np.ones(5, int), np.zeros(5, int)  # both constant, different
    yield np.array([1]), np.array([1])  # a single example
    yield np.array([1]), np.array([0])
    yield np.array([-3, 7, 7, 100]), np.array([7, -3, 7, 100])  # arbitrary class ids
    yield np.array([1, 0, 1, 0]), 1 - np.array([1, 0, 1, 0])  # perfectly anti-correlated


def test_accuracy_against_sklearn():
    for p, y in _class_draws(1):
        assert metrics.accuracy(p, y) == pytest.approx(skm.accuracy_score(y, p), abs=1e-12)


def test_f1_against_sklearn():
    for p, y in _class_draws(2):
        for positive in np.unique(np.concatenate([p, y, [1]])):
            # sklearn's binary F1 of one class, also on multi-class data; 0 where undefined.
            want = skm.f1_score(y, p, labels=[positive], average=None, zero_division=0.0)[0]
            assert metrics.f1(p, y, positive=int(positive)) == pytest.approx(want, abs=1e-12), (
                p, y, positive)


def _sk_mcc(y, p) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "A single label was found" on the one-class cases
        return skm.matthews_corrcoef(y, p)


def test_matthews_against_sklearn():
    for p, y in _class_draws(3):
        want = _sk_mcc(y, p)
        assert metrics.matthews_corrcoef(p, y) == pytest.approx(want, abs=1e-12), (p, y)
    # String class names work the same way (np.unique on both sides).
    y, p = np.array(["a", "b", "c", "a"]), np.array(["a", "c", "c", "b"])
    assert metrics.matthews_corrcoef(p, y) == pytest.approx(_sk_mcc(y, p))


def test_glue_metrics_against_sklearn():
    rng = np.random.default_rng(4)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        y2, logits2 = rng.integers(0, 2, n), rng.normal(size=(n, 2))
        p2 = logits2.argmax(-1)
        assert metrics.glue_metrics("mrpc", logits2, y2) == {
            "f1": pytest.approx(skm.f1_score(y2, p2, zero_division=0.0), abs=1e-12),
            "accuracy": pytest.approx(skm.accuracy_score(y2, p2), abs=1e-12)}
        assert metrics.glue_metrics("cola", logits2, y2) == {
            "mcc": pytest.approx(_sk_mcc(y2, p2), abs=1e-12)}
        y3, logits3 = rng.integers(0, 3, n), rng.normal(size=(n, 3))
        assert metrics.glue_metrics("mnli", logits3, y3) == {
            "accuracy": pytest.approx(skm.accuracy_score(y3, logits3.argmax(-1)), abs=1e-12)}


# -------------------------------------------------------------------- correlations: scipy


def _regression_draws(seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(DRAWS):
        n = int(rng.integers(2, 80))
        kind = rng.integers(0, 4)
        if kind == 0:  # continuous, correlated
            y = rng.normal(size=n)
            p = y * rng.normal() + rng.normal(size=n)
        elif kind == 1:  # many ties on both sides (STS-B labels are on a 0.2 grid)
            y = rng.integers(0, 6, n) / 1.0
            p = np.round(y + rng.normal(size=n))
        elif kind == 2:  # a large offset: the mean must be taken out before multiplying
            y = 1e6 + rng.normal(size=n)
            p = 1e6 + y - 1e6 + 0.1 * rng.normal(size=n)
        else:  # a monotone but non-linear relation (Spearman 1, Pearson below)
            y = rng.normal(size=n)
            p = np.exp(3 * y)
        yield p, y
    yield np.array([1.0, 2.0]), np.array([3.0, 5.0])  # two points
    yield np.array([2.0, 1.0]), np.array([3.0, 5.0])
    yield np.array([1.0, 2.0, 2.0, 2.0, 5.0]), np.array([5.0, 4.0, 4.0, 4.0, 1.0])  # exact -1
    yield np.arange(10.0), np.arange(10.0) * 3 + 1  # exact +1 (clipped if rounding overshoots)


def _scipy_corr(fn, p, y) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConstantInputWarning on the constant edge cases
        return float(fn(p, y)[0])


def test_pearson_against_scipy():
    for p, y in _regression_draws(5):
        want = _scipy_corr(scipy.stats.pearsonr, p, y)
        assert metrics.pearson(p, y) == pytest.approx(want, rel=1e-9, abs=1e-9), (p, y)
        assert metrics.pearson(p[:, None], y) == metrics.pearson(p, y)  # [N, 1] heads


def test_spearman_and_ranks_against_scipy():
    for p, y in _regression_draws(6):
        want = _scipy_corr(scipy.stats.spearmanr, p, y)
        assert metrics.spearman(p, y) == pytest.approx(want, rel=1e-9, abs=1e-9), (p, y)
        np.testing.assert_array_equal(metrics.rank_average(p),
                                      scipy.stats.rankdata(p, method="average"))


def test_constant_side_is_nan_like_scipy():
    for p, y in [([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]),
                 ([2.0, 2.0], [2.0, 2.0])]:
        for ours, theirs in ((metrics.pearson, scipy.stats.pearsonr),
                             (metrics.spearman, scipy.stats.spearmanr)):
            assert math.isnan(ours(p, y)) and math.isnan(_scipy_corr(theirs, p, y))


# --------------------------------------------------------------------------- NER: seqeval

TYPES = ("PER", "LOC", "ORG", "MISC")
PREFIXES = {"IOB1": "IB", "IOB2": "IB", "IOBES": "IBES", "mixed": "IBES"}


def _random_tags(rng, n: int, prefixes: str, types) -> list[str]:
    """I.i.d. tags (malformed chunks included): about half O."""
    return ["O" if rng.random() < 0.45 else
            f"{prefixes[rng.integers(len(prefixes))]}-{types[rng.integers(len(types))]}"
            for _ in range(n)]


def _random_spans(rng, n: int, types) -> list[ner.Entity]:
    """Non-overlapping entities, adjacent ones allowed (which IOB1 has to mark with B-)."""
    spans, i = [], int(rng.integers(0, 3))
    while i < n:
        length = int(rng.integers(1, 4))
        if i + length > n:
            break
        spans.append((types[rng.integers(len(types))], i, i + length))
        i += length + int(rng.integers(0, 3))
    return spans


def _encode(spans, n: int, scheme: str) -> list[str]:
    tags = ["O"] * n
    prev_end, prev_type = -1, None
    for etype, a, b in spans:
        for i in range(a, b):
            tags[i] = f"I-{etype}"
        if scheme == "IOB2" or (scheme == "IOB1" and a == prev_end and etype == prev_type):
            tags[a] = f"B-{etype}"
        elif scheme == "IOBES":
            if b - a == 1:
                tags[a] = f"S-{etype}"
            else:
                tags[a], tags[b - 1] = f"B-{etype}", f"E-{etype}"
        prev_end, prev_type = b, etype
    return tags


def _perturb(rng, spans, n: int, types):
    """A 'prediction': spans with boundaries shifted, types changed, some dropped or added."""
    out = []
    for etype, a, b in spans:
        r = rng.random()
        if r < 0.1:
            continue
        if r < 0.2:
            etype = types[rng.integers(len(types))]
        elif r < 0.3:
            b = max(a + 1, min(n, b + int(rng.integers(-1, 2))))
        out.append((etype, a, b))
    out += _random_spans(rng, n, types)[: int(rng.integers(0, 2))]
    out.sort(key=lambda s: s[1])
    kept, end = [], -1  # drop overlaps
    for s in out:
        if s[1] >= end:
            kept.append(s)
            end = s[2]
    return kept


def _corpus(rng, scheme: str):
    """(gold, pred) tag lists of a few sentences of one scheme: random or gold-like."""
    types = TYPES[: int(rng.integers(1, len(TYPES) + 1))]  # one type only, sometimes
    gold, pred = [], []
    for _ in range(int(rng.integers(1, 6))):
        n = int(rng.integers(0, 12))  # empty sentences too
        if rng.random() < 0.5:
            gold.append(_random_tags(rng, n, PREFIXES[scheme], types))
            pred.append(_random_tags(rng, n, PREFIXES[scheme], types))
        else:
            enc = "IOBES" if scheme == "mixed" else scheme
            spans = _random_spans(rng, n, types)
            gold.append(_encode(spans, n, enc))
            pred.append(_encode(_perturb(rng, spans, n, types), n, enc))
    return gold, pred


def _ner_edge_corpora():
    yield [["O", "O"], []], [["O", "O"], []]  # no entities anywhere: all scores 0
    yield [["B-PER", "I-PER"]], [["O", "O"]]  # nothing predicted
    yield [["O", "O"]], [["B-PER", "I-PER"]]  # nothing gold
    yield [["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]]  # perfect
    yield [["I-PER"] * 5], [["B-PER"] * 5]  # one long entity against five single ones


def _seqeval_scores(gold, pred, scheme=None) -> dict:
    """seqeval's micro and per-type scores, in ner.entity_scores' layout."""
    if scheme is None:
        prfs = seq_default.precision_recall_fscore_support
        kw = {}
    else:
        prfs, kw = seq_v1.precision_recall_fscore_support, {"scheme": scheme}
    micro = prfs(gold, pred, average="micro", zero_division=0, **kw)
    per = prfs(gold, pred, average=None, zero_division=0, **kw)  # types in sorted order
    if scheme is None:
        names = sorted({e[0] for s in gold + pred for e in seq_default.get_entities(s)})
    else:
        names = sorted({e.tag for s in gold + pred for e in Tokens(s, scheme).entities})
    assert len(per[0]) == len(names)
    return {"precision": micro[0], "recall": micro[1], "f1": micro[2],
            "per_type": {t: {"precision": per[0][i], "recall": per[1][i], "f1": per[2][i],
                             "support": int(per[3][i])} for i, t in enumerate(names)}}


def _assert_scores_equal(ours: dict, theirs: dict, context) -> None:
    assert set(ours["per_type"]) == set(theirs["per_type"]), context
    for key in ("precision", "recall", "f1"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), (key, context)
    for t, row in theirs["per_type"].items():
        for key, value in row.items():
            assert ours["per_type"][t][key] == pytest.approx(value, abs=1e-12), (t, key, context)


def _seqeval_default_entities(tags) -> list[ner.Entity]:
    return [(t, a, b + 1) for t, a, b in seq_default.get_entities(list(tags))]  # end inclusive


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2", "IOBES", "mixed"])
def test_ner_default_mode_against_seqeval(scheme):
    """conlleval rules: one decoder for every scheme, malformed chunks read as conlleval does."""
    rng = np.random.default_rng({"IOB1": 10, "IOB2": 11, "IOBES": 12, "mixed": 13}[scheme])
    corpora = [_corpus(rng, scheme) for _ in range(DRAWS)] + list(_ner_edge_corpora())
    for gold, pred in corpora:
        for tags in gold + pred:
            assert ner.entities(tags) == _seqeval_default_entities(tags), tags
        _assert_scores_equal(ner.entity_scores(gold, pred), _seqeval_scores(gold, pred),
                             (gold, pred))


@pytest.mark.parametrize("scheme_name, scheme", [("IOB2", IOB2), ("IOBES", IOBES)])
def test_ner_strict_mode_against_seqeval(scheme_name, scheme):
    """seqeval's mode='strict' with the same scheme: only well-formed chunks count."""
    rng = np.random.default_rng({"IOB2": 20, "IOBES": 21}[scheme_name])
    corpora = [_corpus(rng, scheme_name) for _ in range(DRAWS)] + list(_ner_edge_corpora())
    if scheme_name == "IOBES":
        corpora.append(([["B-PER", "S-PER", "E-PER", "I-PER", "E-LOC"]],
                        [["B-PER", "I-PER", "I-PER", "E-PER", "S-LOC"]]))
    for gold, pred in corpora:
        for tags in gold + pred:
            want = [(e.tag, e.start, e.end) for e in Tokens(tags, scheme).entities]
            assert ner.strict_entities(tags, scheme_name) == want, tags
        _assert_scores_equal(ner.entity_scores(gold, pred, strict=scheme_name),
                             _seqeval_scores(gold, pred, scheme), (gold, pred))


def test_ner_wellformed_iob1_equals_seqeval_strict_iob1():
    """bertjax has no strict IOB1; on well-formed IOB1 its default decoding is seqeval's strict
    IOB1 decoding and gives back exactly the encoded entities, also after iob1_to_iob2."""
    rng = np.random.default_rng(30)
    for _ in range(DRAWS):
        n = int(rng.integers(0, 15))
        spans = _random_spans(rng, n, TYPES[: int(rng.integers(1, 5))])
        tags = _encode(spans, n, "IOB1")
        assert ner.entities(tags) == spans, tags
        assert [(e.tag, e.start, e.end) for e in Tokens(tags, IOB1).entities] == spans, tags
        assert ner.strict_entities(ner.iob1_to_iob2(tags), "IOB2") == spans, tags


def test_ner_strict_differs_from_default_by_hand():
    """The documented difference of the two modes, on one worked sentence.

    tags: I-PER I-PER O B-LOC I-LOC E-LOC I-ORG
      default (conlleval): PER(0,2) [I- after O opens a chunk], LOC(3,6), ORG(6,7)
      strict IOB2: LOC(3,5) only [E- is not an IOB2 tag, so the chunk ends at 5; stray I-s
        open nothing]
      strict IOBES: LOC(3,6) only [B- I- E- is complete; stray I-s open nothing]
    Gold (IOB2) B-PER I-PER O B-LOC I-LOC O O: default P = 1/3 (PER right), R = 1/2.
    """
    pred = ["I-PER", "I-PER", "O", "B-LOC", "I-LOC", "E-LOC", "I-ORG"]
    gold = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "O"]
    assert ner.entities(pred) == [("PER", 0, 2), ("LOC", 3, 6), ("ORG", 6, 7)]
    assert ner.strict_entities(pred, "IOB2") == [("LOC", 3, 5)]
    assert ner.strict_entities(pred, "IOBES") == [("LOC", 3, 6)]
    out = ner.entity_scores([gold], [pred])
    assert (out["precision"], out["recall"]) == (pytest.approx(1 / 3), pytest.approx(1 / 2))
    # Strict IOB2: the only predicted entity, LOC(3,5), is right: P = 1, R = 1/2.
    out = ner.entity_scores([gold], [pred], strict="IOB2")
    assert (out["precision"], out["recall"]) == (1.0, 0.5)


# ------------------------------------------------------------------- SQuAD: transformers

# Articles inside words with punctuation ("a.m.", "l'an", "t-he") tell whether punctuation goes
# before articles; "" as a separator glues pieces ("the,cat").
WORDS = ["a", "an", "the", "The", "A", "AN", "Denver", "Broncos", "broncos", "cat", "Über",
         "über", "naïve", "42", "3.5", "Levi's", "U.S.", "co-op", "ß", "theatre", "another",
         "Σίσυφος", "北京", "x", "a.m.", "A-list", "l'an", "t-he"]
PUNCT = [",", ".", "!", "'", "-", "(", ")", '"', "$", "?", "…", "«"]  # … and « are not ASCII
SPACES = [" ", " ", " ", "  ", "\t", "\n", "\xa0", ""]


def _text(rng, max_words: int = 6) -> str:
    out = []
    for _ in range(int(rng.integers(0, max_words + 1))):
        piece = WORDS[rng.integers(len(WORDS))] if rng.random() < 0.8 else PUNCT[
            rng.integers(len(PUNCT))]
        if rng.random() < 0.15:
            piece += PUNCT[rng.integers(len(PUNCT))]
        out.append(piece + SPACES[rng.integers(len(SPACES))])
    return "".join(out)


def _nonempty_text(rng) -> str:
    while True:
        text = _text(rng)
        if squad.normalize_answer(text):
            return text


def _near(rng, gold: str) -> str:
    """A prediction overlapping `gold`: words dropped, added, re-cased."""
    words = gold.split()
    keep = [w.upper() if rng.random() < 0.2 else w for w in words if rng.random() < 0.8]
    return " ".join(keep + _text(rng, 2).split())


def test_normalize_exact_f1_against_transformers():
    rng = np.random.default_rng(40)
    pairs = [(_text(rng), _text(rng)) for _ in range(5 * DRAWS)]
    pairs += [(g, _near(rng, g)) for g, _ in pairs[:DRAWS]]
    pairs += [("", ""), ("the", ""), ("", "a"), ("The, a!", "..."), ("cat cat", "cat"),
              ("Levi's", "levis"), ("the\xa0cat", "cat")]
    for gold, pred in pairs:
        assert squad.normalize_answer(pred) == hf.normalize_answer(pred), pred
        assert squad.exact_match(pred, gold) == hf.compute_exact(gold, pred), (gold, pred)
        assert squad.token_f1(pred, gold) == pytest.approx(hf.compute_f1(gold, pred), abs=1e-12), (
            gold, pred)


def _squad_set(rng, *, v2: bool = True, n: int | None = None):
    """A random SQuAD dataset, predictions and null odds.

    HasAns questions get 1-3 answers (one may normalise to nothing, next to a real one);
    predictions are near a gold answer, unrelated, or empty; a NoAns question's prediction
    never normalises to nothing while being non-empty (that case is an intended difference).
    """
    n = int(rng.integers(1, 30)) if n is None else n
    qas, preds = [], {}
    for q in range(n):
        qid = f"q{q}"
        if v2 and rng.random() < 0.4:
            qas.append({"id": qid, "question": "?", "answers": [], "is_impossible": True})
            preds[qid] = "" if rng.random() < 0.3 else _nonempty_text(rng)
            continue
        answers = [_nonempty_text(rng) for _ in range(int(rng.integers(1, 4)))]
        if rng.random() < 0.1:
            answers.append("the .")  # dropped by both: normalises to nothing
        qas.append({"id": qid, "question": "?",
                    "answers": [{"text": t, "answer_start": 0} for t in answers]})
        r = rng.random()
        preds[qid] = (_near(rng, answers[rng.integers(len(answers))]) if r < 0.6 else
                      "" if r < 0.7 else _text(rng))
    data = {"version": "v2.0" if v2 else "1.1",
            "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]}
    odds = {qid: float(rng.normal()) for qid in preds}
    return data, preds, odds


def _examples(data) -> list[SquadExample]:
    return [SquadExample(qa["id"], qa["question"], "c", None, None, "t",
                         answers=qa["answers"], is_impossible=qa.get("is_impossible", False))
            for article in data["data"] for p in article["paragraphs"] for qa in p["qas"]]


def _hf_evaluate(data, preds, odds=None, threshold=1.0) -> dict:
    return dict(hf.squad_evaluate(_examples(data), preds, odds, threshold))


GROUP_KEYS = [f"{g}{k}" for g in ("", "HasAns_", "NoAns_") for k in ("exact", "f1", "total")]


def test_evaluate_against_transformers():
    rng = np.random.default_rng(41)
    for draw in range(DRAWS):
        data, preds, odds = _squad_set(rng, v2=draw % 4 != 0)
        # Without null odds (transformers: all probabilities 0, threshold 1 -> nothing nulled).
        ours, theirs = squad.evaluate(data, preds), _hf_evaluate(data, preds)
        assert {k for k in GROUP_KEYS if k in ours} == {k for k in GROUP_KEYS if k in theirs}
        for key in GROUP_KEYS:
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], abs=1e-9), (key, data, preds)
        # With null odds and a threshold: odds above it turn the prediction into "".
        threshold = float(rng.normal())
        ours = squad.evaluate(data, preds, odds, threshold)
        theirs = _hf_evaluate(data, preds, odds, threshold)
        for key in GROUP_KEYS:
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], abs=1e-9), (key, threshold)


def test_best_thresholds_against_transformers_distinct_odds():
    """Distinct odds: every prefix of the sorted questions is one threshold, so the searches
    must agree on the best scores, and on the threshold whenever some cut beats "all null"."""
    rng = np.random.default_rng(42)
    for _ in range(DRAWS):
        data, preds, odds = _squad_set(rng)
        ours = squad.best_thresholds(data, preds, odds)
        theirs = _hf_evaluate(data, preds, odds)
        all_null = squad.evaluate(data, {q: "" for q in preds})
        for name in ("exact", "f1"):
            assert ours[f"best_{name}"] == pytest.approx(theirs[f"best_{name}"], abs=1e-9), (
                name, data, preds, odds)
            if ours[f"best_{name}"] > all_null[name] + 1e-9:
                assert ours[f"best_{name}_thresh"] == theirs[f"best_{name}_thresh"], name
            else:  # intended difference: a threshold that really nulls every question
                assert ours[f"best_{name}_thresh"] < min(odds.values())
                assert theirs[f"best_{name}_thresh"] == 0.0
            # The threshold reproduces the score through evaluate().
            assert squad.evaluate(data, preds, odds, ours[f"best_{name}_thresh"])[name] == (
                pytest.approx(ours[f"best_{name}"], abs=1e-9))


def test_best_thresholds_with_tied_odds_against_transformers_scoring():
    """Tied odds: the best threshold is the best of the thresholds that exist, each scored by
    transformers' squad_evaluate; transformers' own search (which splits ties) can only claim
    as much or more."""
    rng = np.random.default_rng(43)
    split_ties_claimed_more = 0
    for _ in range(DRAWS // 3):
        data, preds, _ = _squad_set(rng)
        odds = {q: float(rng.integers(-2, 3)) for q in preds}  # many ties
        ours = squad.best_thresholds(data, preds, odds)
        values = sorted(set(odds.values()))
        candidates = [values[0] - 0.5] + values  # "all null", then each cut after a run
        scored = [_hf_evaluate(data, preds, odds, t) for t in candidates]
        for name in ("exact", "f1"):
            scores = [s[name] for s in scored]
            best = max(scores)
            assert ours[f"best_{name}"] == pytest.approx(best, abs=1e-9)
            first = next(i for i, s in enumerate(scores) if s >= best - 1e-9)
            if first == 0:
                assert ours[f"best_{name}_thresh"] < values[0]
            else:
                assert ours[f"best_{name}_thresh"] == candidates[first]
            claimed = scored[0][f"best_{name}"]
            assert claimed >= best - 1e-9
            split_ties_claimed_more += claimed > best + 1e-9
    assert split_ties_claimed_more > 0  # the draws do exercise the difference


def test_missing_predictions_scaled_against_transformers():
    """A question without a prediction scores 0 in bertjax and stays in the total; transformers
    drops it. So bertjax's score × all questions = transformers' score on the predicted ones ×
    their number, for evaluate and for the best-threshold search."""
    rng = np.random.default_rng(44)
    for _ in range(DRAWS // 3):
        data, preds, odds = _squad_set(rng, n=int(rng.integers(2, 30)))
        drop = [q for q in preds if rng.random() < 0.3] or [next(iter(preds))]
        kept_preds = {q: p for q, p in preds.items() if q not in drop}
        kept_odds = {q: odds[q] for q in kept_preds}
        total = len(preds)
        ours = squad.evaluate(data, kept_preds)
        ours_best = squad.best_thresholds(data, kept_preds, kept_odds)
        assert ours["missing"] == len(drop) and ours["total"] == total
        if not kept_preds:
            assert ours["exact"] == ours["f1"] == 0.0
            continue
        qas = data["data"][0]["paragraphs"][0]["qas"]
        kept = {"data": [{"title": "t", "paragraphs": [{"context": "c", "qas": [
            qa for qa in qas if qa["id"] in kept_preds]}]}]}
        theirs = _hf_evaluate(kept, kept_preds, kept_odds, math.inf)  # inf: nothing nulled
        for name in ("exact", "f1"):
            assert ours[name] * total == pytest.approx(theirs[name] * len(kept_preds), abs=1e-6)
            assert ours_best[f"best_{name}"] * total == pytest.approx(
                theirs[f"best_{name}"] * len(kept_preds), abs=1e-6)
            # And the best score is what evaluate() gives at the threshold found.
            assert squad.evaluate(data, kept_preds, kept_odds, ours_best[f"best_{name}_thresh"])[
                name] == pytest.approx(ours_best[f"best_{name}"], abs=1e-9)


def _one_article(*qas):
    return {"data": [{"title": "t", "paragraphs": [{"context": "c", "qas": list(qas)}]}]}


def test_squad_intended_differences_by_hand():
    has = {"id": "h", "question": "?", "answers": [{"text": "Denver", "answer_start": 0}]}
    no = {"id": "n", "question": "?", "answers": [], "is_impossible": True}

    # 1. Missing prediction: h answered right, n missing. bertjax: (1 + 0) / 2 = 50; transformers
    #    scores h alone: 100 (its per-group totals raise KeyError on a missing question, so its
    #    overall score is taken from get_raw_scores + make_eval_dict, as squad_evaluate does).
    data = _one_article(has, no)
    assert squad.evaluate(data, {"h": "Denver"})["exact"] == 50.0
    exact, f1 = hf.get_raw_scores(_examples(data), {"h": "Denver"})
    assert hf.make_eval_dict(exact, f1) == {"exact": 100.0, "f1": 100.0, "total": 1}

    # 2. Tied odds. h right (+1 when answered), n given "Broncos" (−1 when answered), both odds
    #    0. Thresholds: below 0 -> both null: h 0, n 1 -> 50; at/above 0 -> both answered: 1 + 0
    #    -> 50. Best 50, at the lower threshold. transformers answers h alone (not reachable:
    #    it needs odds(h) <= t < odds(n)) and claims 100 at threshold 0.
    preds, odds = {"h": "Denver", "n": "Broncos"}, {"h": 0.0, "n": 0.0}
    ours = squad.best_thresholds(data, preds, odds)
    assert ours["best_exact"] == 50.0 and ours["best_exact_thresh"] < 0.0
    theirs = _hf_evaluate(data, preds, odds)
    assert (theirs["best_exact"], theirs["best_exact_thresh"]) == (100.0, 0.0)
    assert max(_hf_evaluate(data, preds, odds, t)["exact"] for t in (-1.0, 0.0)) == 50.0

    # 3. "All null" is best and every odds is negative: h wrong ("Broncos", 0 either way), n
    #    given "Broncos" at odds −2 and h at −1. All null: n 1 -> 50; anything answered is worse.
    #    bertjax's threshold is below −2 (nulls both); transformers' 0.0 would answer both (0).
    preds, odds = {"h": "Broncos", "n": "Broncos"}, {"h": -1.0, "n": -2.0}
    ours = squad.best_thresholds(data, preds, odds)
    assert ours["best_exact"] == 50.0 and ours["best_exact_thresh"] < -2.0
    assert squad.evaluate(data, preds, odds, ours["best_exact_thresh"])["exact"] == 50.0
    theirs = _hf_evaluate(data, preds, odds)
    assert (theirs["best_exact"], theirs["best_exact_thresh"]) == (50.0, 0.0)
    assert _hf_evaluate(data, preds, odds, 0.0)["exact"] == 0.0

    # 4. A no-answer question whose best span normalises to nothing: "The." scores EM 1 against
    #    "" (in transformers' evaluate too). n ("The.", odds −1) and h (right, odds 0): answering
    #    both gives 1 + 1 -> 100 at threshold 0 (all null: 0 + 1 -> 50). transformers' search
    #    counts "The." as a wrong answer (−1) and so claims 50, while its own evaluate at
    #    threshold 0 gives 100.
    data = _one_article(has, no)
    preds, odds = {"h": "Denver", "n": "The."}, {"h": 0.0, "n": -1.0}
    assert squad.evaluate(data, preds)["exact"] == 100.0 == _hf_evaluate(data, preds)["exact"]
    assert squad.best_thresholds(data, preds, odds)["best_exact"] == 100.0
    assert squad.best_thresholds(data, preds, odds)["best_exact_thresh"] == 0.0
    assert _hf_evaluate(data, preds, odds)["best_exact"] == 50.0
    assert _hf_evaluate(data, preds, odds, 0.0)["exact"] == 100.0

    # 5. Every answer normalises to nothing ("The", "."): bertjax files the question under NoAns
    #    (its gold is ""), transformers under HasAns; both score "" as right.
    odd = {"id": "o", "question": "?", "answers": [{"text": "The", "answer_start": 0},
                                                   {"text": ".", "answer_start": 4}]}
    data = _one_article(odd)
    ours, theirs = squad.evaluate(data, {"o": ""}), _hf_evaluate(data, {"o": ""})
    assert ours["exact"] == theirs["exact"] == 100.0
    assert ours["NoAns_total"] == 1 and "HasAns_total" not in ours
    assert theirs["HasAns_total"] == 1 and "NoAns_total" not in theirs
