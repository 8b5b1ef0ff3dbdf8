"""SQuAD scoring, windows, max-context ownership and span decoding on hand-worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bertjax.finetuning import squad


@pytest.mark.parametrize("text, expected", [
    ("The  Cat, sat!", "cat sat"),          # lower, punctuation, article, whitespace
    ("An apple a day", "apple day"),
    ("Theatre and the-end", "theatre and theend"),  # "the" only as a word; "-" is punctuation
    ("the,", ""),                           # punctuation first, then the article goes
    ("  Levi's Stadium. ", "levis stadium"),
])
def test_normalize_answer(text, expected):
    assert squad.normalize_answer(text) == expected


def test_exact_and_f1():
    assert squad.exact_match("The Broncos!", "broncos") == 1.0
    # pred -> "cat sat on mat" (4 tokens), gold -> "cat on mat" (3): 3 common,
    # P = 3/4, R = 1, F1 = 2·(3/4)/(7/4) = 6/7.
    assert squad.token_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    # Repeated tokens count with multiplicity: "x x y" vs "x y y": common = {x:1, y:1} = 2, P = R = 2/3, F1 = 2/3.
    assert squad.token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert squad.token_f1("", "") == 1.0 and squad.token_f1("", "x") == 0.0
    assert squad.token_f1("x", "") == 0.0
    # Max over gold answers: EM hits "The Broncos"; F1 vs "Denver Broncos" would be 2/3.
    assert squad.score_prediction("Broncos", ["Denver Broncos", "The Broncos"]) == (1.0, 1.0)


def _dataset():
    def qa(qid, answers, impossible=False):
        return {"id": qid, "question": "?", "is_impossible": impossible,
                "answers": [{"text": t, "answer_start": 0} for t in answers]}
    return {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": [
        qa("q1", ["Denver Broncos", "Broncos"]),
        qa("q2", ["Santa Clara, California"]),
        qa("q3", [], impossible=True),
        qa("q4", [], impossible=True),
        qa("q5", ["Levi's Stadium"]),
    ]}]}]}


def test_evaluate_v2_hand_worked():
    preds = {"q1": "the Denver Broncos.", "q2": "California", "q3": "", "q4": "Levi's Stadium"}
    # q1: EM 1, F1 1 (normalisation). q2: EM 0; F1: P = 1/1, R = 1/3 -> 2·(1/3)/(4/3) = 0.5.
    # q3: no answer, empty prediction -> 1, 1.  q4: no answer, predicted text -> 0, 0.
    # q5: missing -> 0, 0.
    out = squad.evaluate(_dataset(), preds)
    assert out["exact"] == pytest.approx(100 * 2 / 5)
    assert out["f1"] == pytest.approx(100 * 2.5 / 5)
    assert out["HasAns_exact"] == pytest.approx(100 * 1 / 3)
    assert out["HasAns_f1"] == pytest.approx(100 * 1.5 / 3)
    assert (out["NoAns_exact"], out["NoAns_f1"]) == (50.0, 50.0)
    assert (out["total"], out["HasAns_total"], out["NoAns_total"], out["missing"]) == (5, 3, 2, 1)
    # Odds above the threshold turn q4 (and q2) into "": NoAns 100, q2 now scores 0.
    out = squad.evaluate(_dataset(), preds, null_odds={"q1": -3, "q2": 2, "q3": 0, "q4": 1},
                         null_threshold=0.5)
    assert out["NoAns_exact"] == 100.0 and out["HasAns_f1"] == pytest.approx(100 / 3)


def test_evaluate_v1_has_no_noans_keys():
    data = [{"paragraphs": [{"qas": [{"id": "a", "answers": [{"text": "x"}]}]}]}]
    assert squad.evaluate(data, {"a": "x"}) == {"exact": 100.0, "f1": 100.0, "total": 1,
                                                "HasAns_exact": 100.0, "HasAns_f1": 100.0,
                                                "HasAns_total": 1, "missing": 0}


def test_best_thresholds_hand_worked():
    # Best non-null spans; q5 has none. Gains (answered − null score):
    #   q1 odds -3: EM +1, F1 +1     q2 odds -1: EM 0, F1 +0.5
    #   q4 odds .5: -1, -1 (no-answer question given a text)   q3 odds 1: -1, -1
    # All null scores 2 (q3, q4). Cumulative EM: 3, 3, 2, 1 -> best 3 at -3 (60%).
    # Cumulative F1: 3, 3.5, 2.5, 1.5 -> best 3.5 at -1 (70%).
    preds = {"q1": "the Denver Broncos.", "q2": "California", "q3": "Levi's",
             "q4": "Levi's Stadium"}
    odds = {"q1": -3.0, "q2": -1.0, "q3": 1.0, "q4": 0.5}
    out = squad.best_thresholds(_dataset(), preds, odds)
    assert out == {"best_exact": pytest.approx(60.0), "best_exact_thresh": -3.0,
                   "best_f1": pytest.approx(70.0), "best_f1_thresh": -1.0}
    # The threshold found reproduces the score through evaluate().
    assert squad.evaluate(_dataset(), preds, odds, out["best_f1_thresh"])["f1"] == (
        pytest.approx(70.0))


def test_best_thresholds_ties_cross_together():
    # Equal odds: answering q1 (+1) without q2 (−1) is not reachable by any threshold, so the
    # best is "all null" (1 of 2) with a threshold just below the odds.
    data = [{"paragraphs": [{"qas": [{"id": "q1", "answers": [{"text": "x"}]},
                                     {"id": "q2", "answers": []}]}]}]
    out = squad.best_thresholds(data, {"q1": "x", "q2": "y"}, {"q1": 0.0, "q2": 0.0})
    assert out["best_exact"] == 50.0 and out["best_exact_thresh"] < 0.0
    assert squad.evaluate(data, {"q1": "x", "q2": "y"}, {"q1": 0.0, "q2": 0.0},
                          out["best_exact_thresh"])["exact"] == 50.0


def test_windows():
    assert squad.windows(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
    assert squad.windows(10, 4, 6) == [(0, 4), (4, 4), (8, 2)]  # stride > window: no gap
    assert squad.windows(3, 4, 2) == [(0, 3)]
    assert squad.windows(0, 4, 2) == [(0, 0)]
    with pytest.raises(ValueError, match="doc_stride must be >= 1, got 4 and 0"):
        squad.windows(5, 4, 0)


def test_max_context_windows():
    # Windows (0,4),(3,4),(6,4). Token 3: w0 min(3,0)=0, w1 min(0,3)=0 -> tie, earlier w0.
    # Token 4: w1 min(1,2)=1. Token 6: w1 min(3,0)=0 vs w2 min(0,3)=0 -> w1. Token 7: w2 (1).
    np.testing.assert_array_equal(
        squad.max_context_windows([(0, 4), (3, 4), (6, 4)], 10), [0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    # Token 1 is equally centred in both (min(1,1) = 1): the longer window wins by 0.01·length
    # (1.05 vs 1.03); so does token 0 (0.05 vs 0.03).
    np.testing.assert_array_equal(squad.max_context_windows([(0, 3), (0, 5)], 5), [1, 1, 1, 1, 1])


def test_targets():
    offsets = [(0, 5), (6, 10), (11, 16)]  # "alpha beta gamma"
    assert squad.char_span_to_tokens(offsets, 6, 16) == (1, 2)
    assert squad.char_span_to_tokens(offsets, 7, 10) == (1, 1)  # inside a token
    assert squad.char_span_to_tokens(offsets, 5, 6) is None     # the space
    assert squad.window_targets((3, 4), (2, 4), context_start=3) == (4, 5)
    assert squad.window_targets((3, 4), (0, 4), context_start=3) == (0, 0)  # not wholly inside
    assert squad.window_targets(None, (0, 4), context_start=3) == (0, 0)


CONTEXT = "alpha beta gamma delta epsilon zeta"
OFFSETS = [(0, 5), (6, 10), (11, 16), (17, 22), (23, 30), (31, 35)]
# Sequence: [CLS] q [SEP] 4 context tokens [SEP] -> context starts at position 3, L = 8.
# windows(6, 4, 2) = (0,4), (2,4); owners: t0-t2 -> w0 (t2: 1 vs 0), t3-t5 -> w1 (t3: 0 vs 1).
SPANS = [(0, 4), (2, 4)]
# w0 covers t0..t3 at positions 3..6; w1 covers t2..t5 at positions 3..6.
W0_START = np.array([1, -9, -9, -5, -6, -7, 10, -9.0])
W0_END = np.array([1, -9, -9, -5, -5, -5, 10, -9.0])
W1_START = np.array([0.5, -9, -9, -9, 3, -9, -9, -9])
W1_END = np.array([0.5, -9, -9, -9, -9, 3, -9, -9])


def _decode(**kw):
    assert squad.windows(6, 4, 2) == SPANS
    return squad.decode([W0_START, W1_START], [W0_END, W1_END], SPANS, 3, CONTEXT, OFFSETS, **kw)


def test_decode_across_two_windows_with_max_context():
    # w0's "delta" (t3,t3) scores 10 + 10 = 20 but t3 is owned by w1, so it is never proposed.
    # Valid: w1 (t3,t4) 3 + 3 = 6 "delta epsilon"; w0 (t0,t3) −5 + 10 = 5; w0 (t1,t3) −6 + 10 = 4.
    ans = _decode(n_best=3)
    assert ans.text == ans.best_span == "delta epsilon"
    assert [(c.text, c.score) for c in ans.nbest] == [
        ("delta epsilon", 6.0), ("alpha beta gamma delta", 5.0), ("beta gamma delta", 4.0)]
    assert (ans.nbest[0].start_char, ans.nbest[0].end_char) == (17, 30)
    z = math.exp(6) + math.exp(5) + math.exp(4)
    assert ans.nbest[0].probability == pytest.approx(math.exp(6) / z)
    assert ans.null_score is None and ans.null_odds is None


def test_decode_max_answer_length():
    # Two tokens at most: w0's best becomes (t2,t3) = −7 + 10 = 3 "gamma delta".
    ans = _decode(n_best=2, max_answer_length=2)
    assert [(c.text, c.score) for c in ans.nbest] == [("delta epsilon", 6.0), ("gamma delta", 3.0)]


def test_decode_v2_null_rule():
    # null = min over windows of start[CLS] + end[CLS] = min(1 + 1, .5 + .5) = 1; odds = 1 − 6.
    ans = _decode(n_best=3, version_2=True)
    assert (ans.null_score, ans.null_odds, ans.text) == (1.0, -5.0, "delta epsilon")
    assert [(c.text, c.score) for c in ans.nbest] == [
        ("delta epsilon", 6.0), ("alpha beta gamma delta", 5.0), ("", 1.0)]
    # −5 > −6: the threshold now says "no answer"; the best span is still reported.
    ans = _decode(version_2=True, null_threshold=-6.0)
    assert ans.text == "" and ans.best_span == "delta epsilon"


def test_decode_without_valid_span():
    # Every start sits on a non-context position once the context is cut to nothing.
    ans = squad.decode([W0_START], [W0_END], [(0, 0)], 3, "", [], version_2=True)
    assert ans.text == "" and ans.null_odds == math.inf


def test_decode_matches_brute_force_on_random_logits():
    # Invariant against a plain loop over every (window, start, end) under the same rules.
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(1, 25))
        spans = squad.windows(n, int(rng.integers(2, 8)), int(rng.integers(1, 5)))
        context = " ".join(f"w{i}" for i in range(n))
        offsets, pos = [], 0
        for i in range(n):
            offsets.append((pos, pos + len(f"w{i}")))
            pos += len(f"w{i}") + 1
        q = int(rng.integers(1, 4))  # question tokens: context starts at 2 + q
        length = 2 + q + max(l for _, l in spans) + 1
        starts = [rng.normal(size=length) for _ in spans]
        ends = [rng.normal(size=length) for _ in spans]
        max_len = int(rng.integers(1, 6))
        owner = squad.max_context_windows(spans, n)
        best = (-np.inf, None)
        for w, (s0, ln) in enumerate(spans):
            for a in range(s0, s0 + ln):
                if owner[a] != w:
                    continue
                for b in range(a, min(s0 + ln, a + max_len)):
                    score = starts[w][a - s0 + 2 + q] + ends[w][b - s0 + 2 + q]
                    if score > best[0]:
                        best = (score, context[offsets[a][0]:offsets[b][1]])
        null = min(s[0] + e[0] for s, e in zip(starts, ends))
        ans = squad.decode(starts, ends, spans, 2 + q, context, offsets,
                           max_answer_length=max_len, version_2=True)
        assert ans.best_span == best[1], trial
        assert ans.null_score == pytest.approx(null)
        assert ans.null_odds == pytest.approx(null - best[0])
        assert ans.text == ("" if null - best[0] > 0 else best[1])
