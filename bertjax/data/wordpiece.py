"""WordPiece tokenization for imported BERT checkpoints, id-for-id like transformers' BertTokenizer.

The work is done by Hugging Face ``tokenizers`` (Rust): BertNormalizer (clean text, CJK
spacing, optional lowercase + accent stripping), BertPreTokenizer (whitespace and punctuation)
and the WordPiece model over the checkpoint's vocab.txt. The special tokens are registered as
such, so a literal "[SEP]" in the text stays one token, as it does in BertTokenizer.

Cased or uncased comes from the checkpoint: ``WordPieceTokenizer.from_dir`` reads
``tokenizer_config.json`` (``do_lower_case``, ``strip_accents``, ``tokenize_chinese_chars``)
when present; an explicit argument overrides it.

Inside tf.data, call the numpy batch encoder through ``tf.numpy_function``::

    encode = tok.numpy_pair_encoder(max_length=128)
    def tf_encode(a, b):  # a, b: [B] tf.string
        ids, mask, seg = tf.numpy_function(encode, [a, b], [tf.int32] * 3)
        return ids, mask, seg  # each [B, 128]; set_shape if later ops need static shapes
    ds = ds.batch(32).map(tf_encode)

``tf.numpy_function`` runs the Python function under the GIL, so it does not parallelise across
``num_parallel_calls``; batch first (one call per batch), the Rust encoder is fast.

This module imports neither JAX nor TensorFlow.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import sys
import unicodedata
from typing import Any, Callable, Sequence

import numpy as np

from bertjax.data import fs

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_RESERVED = re.compile(r"\[unused\d+\]")  # BERT vocabularies' spare slots


class WordPieceTokenizer:
    """BERT basic tokenization + WordPiece over a vocab.txt.

    Args:
      vocab_file: one token per line; the line number is the id.
      do_lower_case: lowercase (and, unless ``strip_accents`` is False, strip accents): the
        "uncased" BERT models. False for "cased" models.
      strip_accents: None follows ``do_lower_case`` (BertTokenizer's default).
      tokenize_chinese_chars: put spaces around CJK ideographs.
      max_input_chars_per_word: longer words become [UNK].
    """

    def __init__(self, vocab_file: str, do_lower_case: bool = True,
                 strip_accents: bool | None = None, tokenize_chinese_chars: bool = True,
                 max_input_chars_per_word: int = 100):
        from tokenizers import Tokenizer, normalizers, pre_tokenizers, decoders, models

        self.vocab = load_vocab(vocab_file)
        absent = [t for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]") if t not in self.vocab]
        if absent:
            raise ValueError(f"{vocab_file} lacks the special tokens {absent}; pass a BERT "
                             "WordPiece vocab.txt")
        self.vocab_file = vocab_file
        self.do_lower_case = bool(do_lower_case)
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        tok = Tokenizer(models.WordPiece(self.vocab, unk_token="[UNK]",
                                         max_input_chars_per_word=max_input_chars_per_word))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
            strip_accents=strip_accents, lowercase=self.do_lower_case)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        tok.add_special_tokens([t for t in SPECIAL_TOKENS if t in self.vocab])
        self._tok = tok
        self._strips_accents = strip_accents if strip_accents is not None else self.do_lower_case
        self.pad_id = self.vocab["[PAD]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.unk_id = self.vocab["[UNK]"]

    @classmethod
    def from_dir(cls, directory: str, do_lower_case: bool | None = None) -> "WordPieceTokenizer":
        """Loads ``directory/vocab.txt`` with the casing of ``directory/tokenizer_config.json``.

        Args:
          directory: an HF model directory or a bertjax workdir written by bertjax.convert.
          do_lower_case: overrides the stored value; required when no tokenizer_config.json
            says it (a wrong guess silently maps most cased words to [UNK]).
        """
        vocab = os.path.join(directory, "vocab.txt")
        if not fs.path(vocab).exists():
            raise FileNotFoundError(f"{directory} has no vocab.txt; WordPiece needs the "
                                    "checkpoint's vocabulary")
        settings = read_tokenizer_config(directory)
        if do_lower_case is None:
            do_lower_case = settings.get("do_lower_case")
        if do_lower_case is None:
            raise ValueError(f"{directory} has no tokenizer_config.json with do_lower_case; "
                             "pass do_lower_case=True (uncased model) or False (cased)")
        return cls(vocab, do_lower_case=do_lower_case,
                   strip_accents=settings.get("strip_accents"),
                   tokenize_chinese_chars=settings.get("tokenize_chinese_chars", True))

    def _prepare(self, text: str) -> str:
        """The Python half of BertTokenizer's cleaning (see ``drop_other_chars``), then NFC as
        BertTokenizer applies it (it maps e.g. the Greek question mark to ";" in cased models).

        Uncased, BertTokenizer lowercases before it cleans, so "[\\x06SEP]" is not the special
        token "[SEP]"; cased, the cleaned "[SEP]" is kept whole. Removing the control characters
        outright (cased) or marking them with a NUL the normalizer drops later (uncased)
        reproduces both.
        """
        text = drop_other_chars(text, "\x00" if self.do_lower_case else "")
        text = unicodedata.normalize("NFC", text)
        punct, marks = _unicode_gaps()
        if punct is not None:
            text = punct.sub(r" \g<0> ", text)
        if marks is not None and self._strips_accents:
            text = marks.sub("", unicodedata.normalize("NFD", text))
        return text

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def special_ids(self) -> dict[str, int]:
        """The special tokens' ids by name, where this vocabulary puts them (BERT's own vocabularies
        have [PAD]=0 [UNK]=100 [CLS]=101 [SEP]=102 [MASK]=103); [MASK] only when it has one."""
        return {t: self.vocab[t] for t in SPECIAL_TOKENS if t in self.vocab}

    def _id_count(self) -> int:
        return max(self.vocab.values()) + 1  # ids are line numbers (a repeated token keeps one)

    def word_start_mask(self) -> np.ndarray:
        """bool [ids]: True where a piece begins a word (whole-word masking), False for WordPiece's
        continuations ("##ing"); punctuation and special tokens are words of their own."""
        starts = np.ones(self._id_count(), dtype=bool)
        for token, i in self.vocab.items():
            starts[i] = not token.startswith("##")
        return starts

    def regular_mask(self) -> np.ndarray:
        """bool [ids]: the pieces MLM may mask and draw as random replacements: every id but the
        special tokens and BERT's reserved "[unusedN]" slots, which text never produces."""
        regular = np.zeros(self._id_count(), dtype=bool)
        for token, i in self.vocab.items():
            regular[i] = token not in SPECIAL_TOKENS and not _RESERVED.fullmatch(token)
        return regular

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of one text, without [CLS]/[SEP]."""
        return self._tok.encode(self._prepare(text), add_special_tokens=False).tokens

    def encode(self, text: str) -> list[int]:
        """Ids of one text, without [CLS]/[SEP] (BertTokenizer's ``add_special_tokens=False``)."""
        return self._tok.encode(self._prepare(text), add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of many texts (in parallel in Rust), without [CLS]/[SEP]."""
        texts = [self._prepare(t) for t in texts]
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def encode_pairs(self, texts_a: Sequence[str], texts_b: Sequence[str] | None = None,
                     max_length: int = 128) -> dict[str, np.ndarray]:
        """[CLS] a [SEP] (b [SEP]) per row, truncated and padded to ``max_length``.

        Args:
          texts_a: first segments.
          texts_b: second segments (None: single-segment inputs).
          max_length: total length including the special tokens.

        Returns:
          input_ids, input_mask, segment_ids: int32 [B, max_length].
        """
        ids_a = self.encode_batch(texts_a)
        ids_b = self.encode_batch(texts_b) if texts_b is not None else [None] * len(ids_a)
        if len(ids_b) != len(ids_a):
            raise ValueError(f"encode_pairs got {len(ids_a)} first and {len(ids_b)} second "
                             "segments; pass one second segment per first")
        rows = [pack_pair(a, b, max_length, self.cls_id, self.sep_id) for a, b in zip(ids_a, ids_b)]
        out = {k: np.full((len(rows), max_length), 0, np.int32)
               for k in ("input_ids", "input_mask", "segment_ids")}
        out["input_ids"][:] = self.pad_id
        for i, (ids, seg) in enumerate(rows):
            n = len(ids)
            out["input_ids"][i, :n] = ids
            out["input_mask"][i, :n] = 1
            out["segment_ids"][i, :n] = seg
        return out

    def numpy_pair_encoder(self, max_length: int) -> Callable[..., tuple[np.ndarray, ...]]:
        """A function for ``tf.numpy_function``: (a [B] bytes[, b [B] bytes]) -> (input_ids,
        input_mask, segment_ids), each int32 [B, max_length]. See the module docstring."""
        def encode(a: np.ndarray, b: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
            texts_a = [_text(x) for x in np.asarray(a).reshape(-1)]
            texts_b = None if b is None else [_text(x) for x in np.asarray(b).reshape(-1)]
            out = self.encode_pairs(texts_a, texts_b, max_length)
            return out["input_ids"], out["input_mask"], out["segment_ids"]
        return encode


@functools.cache
def _other_chars_pattern() -> re.Pattern:
    """A regex class of every code point Python's unicodedata files under category C* (control,
    format, surrogate, private use, unassigned) except tab, newline and carriage return."""
    keep = {"\t", "\n", "\r"}
    ranges, start, prev = [], None, None
    for cp in range(sys.maxunicode + 1):
        c = chr(cp)
        if unicodedata.category(c)[0] == "C" and c not in keep:
            if start is None:
                start = cp
            prev = cp
        elif start is not None:
            ranges.append((start, prev))
            start = None
    if start is not None:
        ranges.append((start, prev))
    body = "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)
    return re.compile(f"[{body}]+")


@functools.cache
def _unicode_gaps() -> tuple[re.Pattern | None, re.Pattern | None]:
    """Characters Python's Unicode tables (BertTokenizer's) and the installed tokenizers'
    Rust tables disagree on, found by asking the Rust side about each one once.

    Returns:
      (punctuation Python splits off but Rust keeps inside words, nonspacing marks Python's
      accent stripping removes but Rust's keeps), each as a regex or None when there are none.
    """
    from tokenizers import normalizers, pre_tokenizers

    pre = pre_tokenizers.BertPreTokenizer()
    strip = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False,
                                       strip_accents=True, lowercase=False)
    punct, marks = [], []
    for cp in range(sys.maxunicode + 1):
        cat = unicodedata.category(chr(cp))
        if cat[0] == "P":
            if len(pre.pre_tokenize_str(f"a{chr(cp)}a")) != 3:
                punct.append(chr(cp))
        elif cat == "Mn" and chr(cp) in strip.normalize_str(f"a{chr(cp)}"):
            marks.append(chr(cp))
    as_class = lambda chars: re.compile("[" + "".join(re.escape(c) for c in chars) + "]")
    return (as_class(punct) if punct else None), (as_class(marks) if marks else None)


def drop_other_chars(text: str, marker: str = "") -> str:
    """Removes (or marks) what BertTokenizer's ``_clean_text`` removes as control characters.

    tokenizers' BertNormalizer removes them too, but by its own (Rust) Unicode tables, which
    keep some code points Python calls unassigned; removing them here by Python's tables makes
    the ids equal to BertTokenizer's on any input.

    Args:
      text: raw text.
      marker: what each run of such characters becomes ("\\x00" is dropped by BertNormalizer
        only after special tokens were matched).
    """
    return _other_chars_pattern().sub(marker, text)


def _text(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def truncate_pair(a: list[int], b: list[int] | None, max_tokens: int) -> tuple[list[int],
                                                                                 list[int] | None]:
    """Drops tokens from the end of the longer segment until both fit in ``max_tokens``.

    The google-research/bert rule (``_truncate_seq_pair``): one token at a time from the longer
    one, from the second segment on ties, so a short question keeps all of its tokens.
    """
    a = list(a)
    b = None if b is None else list(b)
    if b is None:
        return a[:max(max_tokens, 0)], None
    while len(a) + len(b) > max_tokens:
        if len(a) > len(b):
            a.pop()
        else:
            b.pop()
    return a, b


def pack_pair(a: list[int], b: list[int] | None, max_length: int, cls_id: int,
              sep_id: int) -> tuple[list[int], list[int]]:
    """[CLS] a [SEP] (b [SEP]) after truncation to ``max_length``; returns (ids, segment_ids)."""
    specials = 3 if b is not None else 2
    if max_length < specials + (1 if b is None else 2):
        raise ValueError(f"max_length={max_length} leaves no room for text after "
                         f"{specials} special tokens")
    a, b = truncate_pair(a, b, max_length - specials)
    ids = [cls_id] + a + [sep_id]
    seg = [0] * len(ids)
    if b is not None:
        ids += b + [sep_id]
        seg += [1] * (len(b) + 1)
    return ids, seg


def load_vocab(vocab_file: str) -> dict[str, int]:
    """vocab.txt -> {token: line number}, like BertTokenizer: only the newline is stripped and
    a repeated token keeps its last line."""
    vocab: dict[str, int] = {}
    # the bytes through the path layer (gs:// too), read as open() reads a text file
    with io.TextIOWrapper(io.BytesIO(fs.path(vocab_file).read_bytes()), encoding="utf-8") as f:
        for i, line in enumerate(f):
            vocab[line.rstrip("\n")] = i
    return vocab


def read_tokenizer_config(directory: str) -> dict[str, Any]:
    """The casing settings of an HF / bertjax directory's tokenizer_config.json ({} if none)."""
    path = fs.path(directory) / "tokenizer_config.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {k: data[k] for k in ("do_lower_case", "strip_accents", "tokenize_chinese_chars")
            if k in data}


def write_tokenizer_files(directory: str, vocab_src: str, do_lower_case: bool,
                          strip_accents: bool | None = None,
                          tokenize_chinese_chars: bool = True, model_max_length: int = 512) -> None:
    """Writes vocab.txt, tokenizer_config.json and special_tokens_map.json that transformers'
    BertTokenizer / AutoTokenizer load as they are."""
    fs.path(vocab_src).copy(fs.path(directory) / "vocab.txt", overwrite=True)
    specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                "cls_token": "[CLS]", "mask_token": "[MASK]"}
    config = dict(tokenizer_class="BertTokenizer", do_lower_case=bool(do_lower_case),
                  strip_accents=strip_accents, tokenize_chinese_chars=tokenize_chinese_chars,
                  do_basic_tokenize=True, model_max_length=model_max_length, **specials)
    root = fs.path(directory)
    (root / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (root / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
