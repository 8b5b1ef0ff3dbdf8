"""Tokenizer: BERT special ids fixed, word starts, vocabulary checks, clear errors."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import sentencepiece as spm

from bertjax.data import text
from bertjax.data import tokenizer as tok_lib
from bertjax.data.errors import DataError


@pytest.fixture(scope="module")
def sentences(corpus_file):
    with open(corpus_file, encoding="utf-8") as f:
        lines = [line.strip() for line in itertools.islice(f, 4000) if line.strip()]
    return [s for line in lines for s in text.split_sentences(line)]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_special_ids_and_round_trip(sentences, model_type, tmp_path):
    tok = tok_lib.train_tokenizer(sentences, vocab_size=500, model_type=model_type, num_threads=2)
    assert tok.vocab_size == 500
    path = str(tmp_path / "t.model")
    tok.save(path)
    tok = tok_lib.Tokenizer.load(path)
    for piece, i in {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}.items():
        assert tok.id_to_piece(i) == piece
    ids = tok.encode(["Return the [MASK] of a [CLS] list."])[0]
    assert all(i not in (0, 2, 3, 4) for i in ids)  # literal "[MASK]" text is never a control id
    assert tok.decode(ids) == "Return the [MASK] of a [CLS] list."


def test_word_start_mask(sentences):
    tok = tok_lib.train_tokenizer(sentences, vocab_size=400, num_threads=2)
    starts = tok.word_start_mask()
    assert starts.shape == (tok.vocab_size,) and starts.dtype == np.bool_
    assert starts[:tok_lib.NUM_SPECIAL].all()
    for i in range(tok_lib.NUM_SPECIAL, tok.vocab_size):
        piece = tok.id_to_piece(i)
        expected = piece.startswith("\u2581") or not any(c.isalnum() for c in piece)
        assert starts[i] == expected, piece
    # Every word of a sentence begins with exactly one word-start piece.
    ids = tok.encode(["internationalization of parsers"])[0]
    assert int(starts[ids].sum()) == 3


def test_vocab_larger_than_text_supports_is_recorded_not_fatal(sentences):
    tok = tok_lib.train_tokenizer(sentences[:300], vocab_size=30522, num_threads=2)
    assert 100 < tok.vocab_size < 30522


def test_vocab_errors(sentences):
    with pytest.raises(DataError, match="special tokens"):
        tok_lib.train_tokenizer(sentences, vocab_size=3)
    with pytest.raises(DataError, match="smaller than the .* characters"):
        tok_lib.train_tokenizer(sentences, vocab_size=20)
    tok = tok_lib.train_tokenizer(sentences, vocab_size=300, num_threads=2)
    tok.check_model_vocab(300)
    tok.check_model_vocab(30522)
    with pytest.raises(DataError, match="model vocab_size is 256"):
        tok.check_model_vocab(256)


def test_foreign_model_with_other_special_ids_is_refused(sentences, tmp_path):
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=proto,
                                   vocab_size=300, minloglevel=2)  # default: <unk>=0, <s>=1, </s>=2
    path = tmp_path / "foreign.model"
    path.write_bytes(proto.getvalue())
    with pytest.raises(DataError, match=r"has .<unk>. at id 0, expected \[PAD\]"):
        tok_lib.Tokenizer.load(str(path))
    with pytest.raises(DataError, match="does not exist"):
        tok_lib.Tokenizer.load(str(tmp_path / "missing.model"))
