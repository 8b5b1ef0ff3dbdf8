"""SentencePiece tokenizer with BERT's special tokens at fixed ids.

[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4; regular pieces start at 5. The model side relies on
these ids (MASK=4, CLS=2), so `Tokenizer.load` refuses a model that places them elsewhere.
[CLS], [SEP] and [MASK] are sentencepiece *control* symbols: text that literally contains "[MASK]"
is encoded as ordinary pieces and can never produce id 4.

Whole-word masking needs to know which pieces start a word: a piece starting with "▁" (the
sentencepiece word-boundary mark) or consisting only of punctuation, as BERT's basic tokenizer
treats punctuation as words of its own.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from bertjax.data import fs
from bertjax.data.errors import DataError

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
SPECIAL_TOKENS = {"[PAD]": PAD_ID, "[UNK]": UNK_ID, "[CLS]": CLS_ID, "[SEP]": SEP_ID,
                  "[MASK]": MASK_ID}
NUM_SPECIAL = len(SPECIAL_TOKENS)  # ids below this are never masked nor used as random tokens
MODEL_TYPES = ("unigram", "bpe")
# Largest vocabulary trained: far above any BERT's (30522; multilingual ones ~250k), and far
# below sizes that stall sentencepiece's trainer (2**31 - 1 had not returned after a minute on a
# 0.7 MB corpus that 10**9 trains on in a second).
MAX_VOCAB_SIZE = 1 << 20
_WORD_MARK = "\u2581"


class Tokenizer:
    """A loaded sentencepiece model with BERT's special ids.

    Attributes:
      path: where the model was loaded from (None when built in memory).
      vocab_size: number of pieces (specials included); ids are in [0, vocab_size).
    """

    def __init__(self, model_proto: bytes, path: str | None = None):
        """Wraps a serialized sentencepiece model; raises DataError if the special ids differ."""
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._proto = model_proto
        self.path = path
        self.vocab_size = int(self._sp.get_piece_size())
        where = path or "the tokenizer model"
        for piece, want in SPECIAL_TOKENS.items():
            got = self._sp.id_to_piece(want) if self.vocab_size > want else None
            if got != piece:
                raise DataError(f"{where} has {got!r} at id {want}, expected {piece} (bertjax "
                                "needs [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4); train it with "
                                "bertjax.data.tokenizer.train_tokenizer or python -m "
                                "bertjax.prepare")

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        """Loads a `.model` file written by `save` / `train_tokenizer`.

        Args:
          path: the sentencepiece model file.

        Returns:
          The tokenizer.
        """
        if fs.path(path).is_dir():
            raise DataError(f"tokenizer model {path} is a directory (expected a sentencepiece "
                            f".model file, e.g. {os.path.join(path, 'tokenizer.model')}); check "
                            "--tokenizer")
        if not fs.is_file(path):
            raise DataError(f"tokenizer model {path} does not exist (expected a sentencepiece "
                            ".model file written by python -m bertjax.prepare); check --tokenizer")
        try:  # sentencepiece parses bytes: the model may live on gs:// like the data
            proto = fs.read_bytes(path)
        except OSError as e:
            raise DataError(f"tokenizer model {path} cannot be read ({e.strerror}; expected a "
                            "readable sentencepiece .model file); fix its permissions") from None
        try:
            return cls(proto, path)
        except RuntimeError as e:  # sentencepiece's parse failure
            raise DataError(f"tokenizer model {path} is not a sentencepiece model ({e}); pass the "
                            "tokenizer.model file that prepare wrote") from None

    def save(self, path: str) -> str:
        """Writes the model atomically (temp name, then rename) and returns its sha256."""
        fs.write_atomic(path, self._proto, tmp=f"{path}.tmp-{os.getpid()}")
        self.path = path
        return self.sha256()

    def sha256(self) -> str:
        """Checksum of the serialized model (recorded in the prepared data's metadata)."""
        return hashlib.sha256(self._proto).hexdigest()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Piece ids of each text (no special tokens added).

        Args:
          texts: sentences.

        Returns:
          One list of ids per text.
        """
        return self._sp.encode(list(texts), out_type=int)

    def id_to_piece(self, i: int) -> str:
        """The piece of one id, word mark "\u2581" included."""
        return self._sp.id_to_piece(int(i))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids; special tokens are shown by name, padding is dropped."""
        pieces = []
        for i in ids:
            i = int(i)
            if i == PAD_ID:
                continue
            pieces.append(self._sp.id_to_piece(i))
        return "".join(pieces).replace(_WORD_MARK, " ").strip()

    def word_start_mask(self) -> np.ndarray:
        """bool [vocab_size]: True where a piece begins a new word (for whole-word masking).

        Special tokens are marked True so that a word never continues across them.
        """
        starts = np.zeros(self.vocab_size, dtype=bool)
        for i in range(self.vocab_size):
            piece = self._sp.id_to_piece(i)
            starts[i] = (i < NUM_SPECIAL or piece.startswith(_WORD_MARK)
                         or not any(c.isalnum() for c in piece))
        return starts

    @property
    def special_ids(self) -> dict[str, int]:
        """The special tokens' ids by name (fixed: 0..4)."""
        return dict(SPECIAL_TOKENS)

    def regular_mask(self) -> np.ndarray:
        """bool [vocab_size]: the pieces MLM may mask and draw as random replacements (id >= 5)."""
        return np.arange(self.vocab_size) >= NUM_SPECIAL

    def check_model_vocab(self, model_vocab_size: int) -> None:
        """Raises DataError if ids could fall outside a model's embedding table.

        Args:
          model_vocab_size: the model config's vocab_size (rows of the embedding table); it may be
            larger than the tokenizer's (padding rows are harmless), never smaller.
        """
        if self.vocab_size > model_vocab_size:
            raise DataError(f"tokenizer {self.path or ''} has {self.vocab_size} pieces but the "
                            f"model vocab_size is {model_vocab_size} (expected model vocab_size >= "
                            f"tokenizer size); set --config.model.vocab_size={self.vocab_size} or "
                            f"prepare with --vocab_size {model_vocab_size}")


def train_tokenizer(sentences: Iterable[str], vocab_size: int = 30522, model_type: str = "unigram",
                    num_threads: int | None = None, seed: int = 0) -> Tokenizer:
    """Trains a sentencepiece model with BERT's special tokens at ids 0..4.

    When the text cannot support `vocab_size` pieces (a small corpus and the unigram model),
    training stops at the largest vocabulary it supports instead of failing; the real size is
    `Tokenizer.vocab_size`, which prepare records in its metadata.

    Args:
      sentences: training text, one sentence per item.
      vocab_size: requested number of pieces, specials included (> 5).
      model_type: "unigram" or "bpe".
      num_threads: trainer threads (default: all cores).
      seed: sentencepiece's random seed, for repeatable models.

    Returns:
      The trained tokenizer (in memory; call `save`).
    """
    if model_type not in MODEL_TYPES:
        raise DataError(f"tokenizer type {model_type!r} is unknown (expected one of "
                        f"{MODEL_TYPES}); pass --tokenizer_type unigram or bpe")
    if vocab_size <= NUM_SPECIAL:
        raise DataError(f"vocab_size {vocab_size} leaves no room for text pieces (expected more "
                        f"than the {NUM_SPECIAL} special tokens [PAD] [UNK] [CLS] [SEP] [MASK]); "
                        "pass --vocab_size 30522 or another value of at least a few hundred")
    if vocab_size > MAX_VOCAB_SIZE:
        raise DataError(f"vocab_size {vocab_size} is too large (expected at most {MAX_VOCAB_SIZE}; "
                        "BERT uses 30522); pass a smaller --vocab_size")
    spm.set_random_generator_seed(seed)
    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=proto, vocab_size=vocab_size,
            model_type=model_type, pad_id=PAD_ID, unk_id=UNK_ID, bos_id=-1, eos_id=-1,
            pad_piece="[PAD]", unk_piece="[UNK]", control_symbols=["[CLS]", "[SEP]", "[MASK]"],
            hard_vocab_limit=False, num_threads=num_threads or os.cpu_count() or 1,
            input_sentence_size=0, minloglevel=2)
    except RuntimeError as e:
        need = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))
        if need:
            raise DataError(f"vocab_size {vocab_size} is smaller than the {need.group(1)} "
                            "characters and special tokens this text needs (expected at least "
                            f"{need.group(1)}); pass a larger --vocab_size such as 30522") from None
        raise DataError(f"sentencepiece could not train a {model_type} vocabulary of {vocab_size} "
                        f"on this text ({str(e).strip().splitlines()[-1]}); try a different "
                        "--vocab_size or more input text") from None
    return Tokenizer(proto.getvalue())
