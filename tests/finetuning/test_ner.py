"""NER tag decoding, entity scores and sub-token alignment on hand-worked sequences."""

from __future__ import annotations

import io

import numpy as np
import pytest

from bertjax.finetuning import ner


@pytest.mark.parametrize("tags, expected", [
    # IOB2.
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
    # I- after O starts an entity; I- after another type starts a new one.
    (["O", "I-LOC", "I-LOC", "I-ORG"], [("LOC", 1, 3), ("ORG", 3, 4)]),
    # I- after B- of another type.
    (["B-PER", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 2)]),
    # IOB1: B- only when the previous word is an entity of the same type -> two PER entities.
    (["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"],
     [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5), ("ORG", 5, 6)]),
    # IOBES, including an I- after E- (new chunk) and an entity open at the sentence end.
    (["S-PER", "B-ORG", "I-ORG", "E-ORG", "I-ORG", "B-LOC"],
     [("PER", 0, 1), ("ORG", 1, 4), ("ORG", 4, 5), ("LOC", 5, 6)]),
    ([], []),
])
def test_entities_conlleval_rules(tags, expected):
    assert ner.entities(tags) == expected


def test_strict_drops_malformed_chunks():
    tags = ["I-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-ORG"]
    assert ner.strict_entities(tags, "IOB2") == [("LOC", 3, 5)]
    assert ner.entities(tags) == [("PER", 0, 2), ("LOC", 3, 5), ("ORG", 5, 6)]
    iobes = ["B-PER", "E-PER", "S-LOC", "B-ORG", "O", "I-MISC"]
    assert ner.strict_entities(iobes, "IOBES") == [("PER", 0, 2), ("LOC", 2, 3)]
    with pytest.raises(ValueError, match="got 'IOB1'"):
        ner.strict_entities(tags, "IOB1")


def test_iob1_to_iob2_keeps_entities():
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG"]
    iob2 = ner.iob1_to_iob2(iob1)
    assert iob2 == ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG"]
    assert ner.entities(iob2) == ner.entities(iob1)
    assert ner.strict_entities(iob2) == ner.entities(iob1)


def test_entity_scores_iob2_hand_worked():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O"],
            ["B-ORG", "I-ORG", "I-ORG", "O"],
            ["O", "B-MISC"]]
    pred = [["B-PER", "O", "O", "B-LOC", "O"],     # PER(0,1) wrong end; LOC right
            ["I-ORG", "I-ORG", "B-ORG", "O"],      # ORG(0,2) + ORG(2,3): both wrong
            ["O", "B-MISC"]]                       # MISC right
    # gold: PER, LOC, ORG, MISC = 4; pred: PER, LOC, ORG, ORG, MISC = 5; correct: LOC, MISC = 2.
    # P = 2/5, R = 2/4, F1 = 2·.4·.5/.9 = 4/9.
    out = ner.entity_scores(gold, pred)
    assert (out["precision"], out["recall"]) == (pytest.approx(0.4), pytest.approx(0.5))
    assert out["f1"] == pytest.approx(4 / 9)
    assert out["per_type"]["LOC"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    # ORG: 0 of 2 predicted right, 0 of 1 found.
    assert out["per_type"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert out["per_type"]["PER"]["f1"] == 0.0 and out["per_type"]["MISC"]["f1"] == 1.0


def test_entity_scores_iob1_hand_worked():
    gold = [["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"]]  # PER(0,2) PER(2,3) LOC ORG
    pred = [["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-LOC"]]  # PER(0,2) PER(2,3) LOC(4,6)
    # correct 2 of 3 predicted, of 4 gold: P = 2/3, R = 1/2, F1 = (2/3)/(7/6) = 4/7.
    out = ner.entity_scores(gold, pred)
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == pytest.approx(0.5)
    assert out["f1"] == pytest.approx(4 / 7)
    assert out["per_type"]["PER"]["f1"] == 1.0 and out["per_type"]["LOC"]["support"] == 1


def test_entity_scores_length_mismatch():
    with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted"):
        ner.entity_scores([["O", "O"]], [["O"]])


LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
ID = {t: i for i, t in enumerate(LABELS)}


def test_subtokens_align_and_read_back():
    # words: John Smithson lives in New York; "Smithson" -> "Smith ##son".
    # tokens: [CLS] John Smith ##son lives in New York [SEP] [PAD]
    word_tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"]
    word_ids = [None, 0, 1, 1, 2, 3, 4, 5, None, -1]
    labels = ner.align_labels([ID[t] for t in word_tags], word_ids)
    np.testing.assert_array_equal(
        labels, [-100, ID["B-PER"], ID["I-PER"], -100, ID["O"], ID["O"], ID["B-LOC"],
                 ID["I-LOC"], -100, -100])
    # The model puts a B-ORG on "##son" (ignored: not a first sub-token) and starts the
    # location with I-LOC (an I- after O starts an entity): entities still match exactly.
    token_pred = ["O", "B-PER", "I-PER", "B-ORG", "O", "O", "I-LOC", "I-LOC", "O", "O"]
    words = ner.word_predictions(token_pred, word_ids)
    assert words == ["B-PER", "I-PER", "O", "O", "I-LOC", "I-LOC"]
    assert ner.entities(words) == ner.entities(word_tags) == [("PER", 0, 2), ("LOC", 4, 6)]
    assert ner.entity_scores([word_tags], [words])["f1"] == 1.0


def test_word_predictions_truncated_words():
    # Word 2 lost to truncation: an error unless a fill value is given.
    with pytest.raises(ValueError, match="word 2 of 3 has no token"):
        ner.word_predictions([0, 5, 6, 0], [None, 0, 1, None], num_words=3)
    assert ner.word_predictions([0, 5, 6, 0], [None, 0, 1, None], num_words=3, fill=0) == [5, 6, 0]
    with pytest.raises(ValueError, match="word 4 but there are only 2"):
        ner.align_labels([1, 2], [None, 0, 4])


def test_write_conll(tmp_path):
    buf = io.StringIO()
    ner.write_conll(buf, [["EU", "rejects"], ["Peter"]], [["B-ORG", "O"], ["B-PER"]],
                    [["B-ORG", "O"], ["B-LOC"]])
    assert buf.getvalue() == "EU B-ORG B-ORG\nrejects O O\n\nPeter B-PER B-LOC\n\n"
    path = tmp_path / "pred.txt"
    ner.write_conll(str(path), [["a"]], [["O"]], [["O"]])
    assert path.read_text() == "a O O\n\n"
    with pytest.raises(ValueError, match="holds whitespace"):
        ner.write_conll(buf, [["New York"]], [["B-LOC"]], [["B-LOC"]])


def test_random_sequences_scheme_invariants():
    # Independent consistency checks over random tag sequences:
    #   * IOB1 -> IOB2 conversion never changes the (conlleval) entities;
    #   * on well-formed IOB2 (the converter's output) lenient and strict decoding agree;
    #   * entities never overlap and never include an O word.
    rng = np.random.default_rng(0)
    vocab = ["O", "I-PER", "B-PER", "I-LOC", "B-LOC"]
    for _ in range(200):
        tags = [vocab[i] for i in rng.integers(0, len(vocab), size=int(rng.integers(0, 12)))]
        iob2 = ner.iob1_to_iob2(tags)
        found = ner.entities(tags)
        assert ner.entities(iob2) == found
        assert ner.strict_entities(iob2, "IOB2") == found
        covered = [i for _, s, e in found for i in range(s, e)]
        assert len(covered) == len(set(covered))
        assert all(tags[i] != "O" for i in covered)
