"""bertjax's sentencepiece tokenizer as a transformers fast tokenizer (``tokenizer.json``).

A run trained on prepared data tokenises with a sentencepiece model (bertjax/data/tokenizer.py:
unigram by default, or BPE; sentencepiece's default ``nmt_nfkc`` normalisation, no lowercasing;
[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4). ``write_sentencepiece`` writes the files that
``transformers.AutoTokenizer.from_pretrained(DIR)`` loads as a ``PreTrainedTokenizerFast`` giving
the same ids: ``[CLS] + encode(a) + [SEP] (+ encode(b) + [SEP])`` with token type ids 0 / 1.

``tokenizer.json`` is built here with the ``tokenizers`` library from the model's own proto, one
step for each of sentencepiece's (sentencepiece/src/normalizer.cc, unigram_model.cc,
bpe_model.cc):

  normalizer     NFC, then the model's precompiled character map (nmt_nfkc: NFKC plus
                 sentencepiece's whitespace and control-character rules; NFC first works
                 around tokenizers' Precompiled dropping combining marks, see ``build``), then
                 ``remove_extra_whitespaces``: spaces at either end dropped, runs made one;
  pre-tokenizer  Metaspace: each space becomes "\u2581", one "\u2581" is put in front
                 (``add_dummy_prefix``), and the text splits before each "\u2581" (pieces never
                 hold an inner "\u2581": sentencepiece trains with ``split_by_whitespace``, so
                 the best segmentation of the whole line is the one of each word);
  model          Unigram with every piece and its score, [UNK] for characters no piece holds
                 (consecutive ones fused into one [UNK], as sentencepiece does), or, for a BPE
                 model, BPE whose merges are ranked by the score of the piece they make;
  post-processor [CLS] A [SEP] (B [SEP]), token types 0 for A, 1 for B.

The five special tokens are added as special tokens at their ids. Checked (tests/
test_hf_export.py): 6.4k lines of the embedded corpus, unigram and BPE, and lines with odd
whitespace, control characters, compatibility forms, CJK, Hangul, Devanagari, emoji, and the
same decomposed (NFD). Two differences stay. Text that literally holds "[MASK]" (or [CLS], ...)
becomes that token in transformers, as with its own BERT tokenizers (the fill-mask pipeline
relies on it), where bertjax's sentencepiece encodes it as ordinary pieces. And a character
that NFKC rewrites (a full-width letter, a ligature) directly followed by a combining mark
loses the mark in tokenizers' Precompiled, where sentencepiece composes the two.

Nothing here imports transformers; ``tokenizers`` and sentencepiece's protobuf module are
imported only when a tokenizer is written.
"""

from __future__ import annotations

import json
import os
from typing import Any

from bertjax.data import tokenizer as tok_lib

WORD_MARK = "\u2581"
TOKENIZER_JSON = "tokenizer.json"
_SPECIAL = sorted(tok_lib.SPECIAL_TOKENS, key=tok_lib.SPECIAL_TOKENS.get)  # by id
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE, _UNUSED = 1, 2, 3, 4, 6, 5
_UNIGRAM, _BPE = 1, 2  # sentencepiece TrainerSpec.ModelType


class TokenizerExportError(ValueError):
    """A sentencepiece model this export cannot reproduce exactly (one line saying why)."""


def read_model(path: str) -> Any:
    """The sentencepiece ModelProto of a .model file, checked to be bertjax's (special ids)."""
    from sentencepiece import sentencepiece_model_pb2

    tok_lib.Tokenizer.load(path)  # a DataError line when it is not bertjax's
    proto = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def _check(proto: Any, path: str) -> None:
    """Refuses settings the built tokenizer would not reproduce (none of bertjax's own)."""
    t, n = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if t.model_type not in (_UNIGRAM, _BPE):
        problems.append(f"model type {t.model_type} (unigram or bpe expected)")
    if t.byte_fallback:
        problems.append("byte_fallback")
    if t.treat_whitespace_as_suffix:
        problems.append("treat_whitespace_as_suffix")
    if not n.escape_whitespaces:
        problems.append("escape_whitespaces off")
    if not t.split_by_whitespace:
        problems.append("split_by_whitespace off")
    if n.normalization_rule_tsv:
        problems.append("a custom normalization_rule_tsv")
    if any(p.type == _USER_DEFINED for p in proto.pieces):
        problems.append("user-defined pieces")
    if problems:
        raise TokenizerExportError(f"{path}: sentencepiece settings {', '.join(problems)} are not "
                                   "bertjax's and cannot be exported exactly")


def build(proto: Any, path: str = "the tokenizer model") -> Any:
    """A ``tokenizers.Tokenizer`` giving bertjax's ids for the sentencepiece ``proto``."""
    from tokenizers import AddedToken, Regex, Tokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

    _check(proto, path)
    n = proto.normalizer_spec
    steps = []
    if n.precompiled_charsmap:
        # NFC first. tokenizers' Precompiled rewrites a short grapheme by the map entry of its
        # first character(s) and drops the rest: a decomposed "e\u0302\u0301" (Vietnamese in
        # NFD) lost its acute. Composed first, such graphemes are single characters; NFC
        # changes no code point's nmt_nfkc result (each one checked against sentencepiece).
        steps += [normalizers.NFC(), normalizers.Precompiled(n.precompiled_charsmap)]
    if n.remove_extra_whitespaces:  # only " " counts, after the character map, as in spm
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""),
                  normalizers.Replace(Regex(" {2,}"), " ")]
    scheme = "always" if n.add_dummy_prefix else "never"
    unk = proto.trainer_spec.unk_id
    pieces = [(p.piece, p.score) for p in proto.pieces]
    if proto.trainer_spec.model_type == _UNIGRAM:
        model = models.Unigram(pieces, unk_id=unk, byte_fallback=False)
    else:
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        model = models.BPE(vocab, bpe_merges(proto), unk_token=pieces[unk][0], fuse_unk=True,
                           byte_fallback=False, ignore_merges=False)
    tok = Tokenizer(model)
    if steps:
        tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_MARK, prepend_scheme=scheme,
                                                 split=True)
    tok.decoder = decoders.Metaspace(replacement=WORD_MARK, prepend_scheme=scheme, split=True)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in _SPECIAL])
    for s in _SPECIAL:
        if tok.token_to_id(s) != tok_lib.SPECIAL_TOKENS[s]:
            raise TokenizerExportError(f"{path}: {s} is id {tok.token_to_id(s)}, not "
                                       f"{tok_lib.SPECIAL_TOKENS[s]}")
    cls, sep = "[CLS]", "[SEP]"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, tok_lib.CLS_ID), (sep, tok_lib.SEP_ID)])
    return tok


def bpe_merges(proto: Any) -> list[tuple[str, str]]:
    """The merges of a sentencepiece BPE model, best first.

    sentencepiece's BPE joins, again and again, the adjacent pair whose concatenation is the
    highest-scoring piece (bpe_model.cc); a merge (a, b) therefore ranks by the score of a + b.
    Every way of splitting a piece into two pieces is a merge of that rank.
    """
    normal = {p.piece: p.score for p in proto.pieces if p.type == _NORMAL}
    ranked = sorted(normal, key=lambda piece: -normal[piece])
    merges = []
    for piece in ranked:
        for i in range(1, len(piece)):
            if piece[:i] in normal and piece[i:] in normal:
                merges.append((piece[:i], piece[i:]))
    return merges


def write_sentencepiece(model_path: str, directory: str, model_max_length: int) -> None:
    """Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json for the
    sentencepiece model at ``model_path`` into ``directory``.

    Raises:
      DataError: the file is not a bertjax sentencepiece model (one line).
      TokenizerExportError: its settings cannot be reproduced (one line).
    """
    proto = read_model(model_path)
    build(proto, model_path).save(os.path.join(directory, TOKENIZER_JSON))
    names = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
             "sep_token": "[SEP]", "mask_token": "[MASK]"}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **names,
              "model_max_length": int(model_max_length), "padding_side": "right",
              "truncation_side": "right", "clean_up_tokenization_spaces": False,
              "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
              "bertjax_tokenizer": {"kind": "sentencepiece",
                                    "model_type": "unigram" if proto.trainer_spec.model_type ==
                                    _UNIGRAM else "bpe",
                                    "normalization": proto.normalizer_spec.name}}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
        json.dump(names, f, indent=2)
