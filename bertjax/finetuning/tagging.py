"""Token classification (named-entity recognition) as a family of the fine-tuning runner.

  * model    ``TokenTagger``: BertModel, dropout, then a dense layer per token to the tag logits;
  * data     CoNLL files ("word ... tag" lines, blank line between sentences; bertjax.data.tasks
             .read_conll) or TFDS ``conll2003`` (``config.data.tfds``). Each word is tokenised on
             its own; only its first sub-token carries the word's tag (label -1 on the others,
             on [CLS]/[SEP] and on padding, ner.align_labels), so the loss and the token
             accuracy count words, not pieces;
  * labels   the tags of the training file, sorted with "O" first, unless ``config.data.labels``
             lists them; the list is written into the config saved with the checkpoint so
             ``--eval_only`` reads the same ids. A dev tag outside the list is an error;
  * schemes  ``config.data.scheme``: IOB2 (BIO, the default), IOBES, or IOB1 (CoNLL-2003's
             original files), which is rewritten as IOB2 when read: the entities are the same
             and every entity then starts with B-, so the model learns one start tag. Labelled
             files are checked against the scheme (``check_tags``): the prefixes, and for IOB2
             and IOBES the order (an I- opening an entity in an "IOB2" file is IOB1's mark,
             and the error says so);
  * metrics  entity-level micro precision/recall/F1 with conlleval / seqeval (default mode)
             semantics (ner.entity_scores; headline "f1"), per-type scores, word accuracy,
             and strict_f1 / strict_precision / strict_recall (seqeval's strict mode);
  * output   predictions/<split>.conll: "word gold predicted" per line (conlleval's input).

Long sentences are split, not truncated: a sentence whose pieces do not fit in
``max_seq_length - 2`` is cut at word boundaries into consecutive windows (no overlap), each a
row of its own, so every word is predicted exactly once. Only a single word with more pieces than
a window holds loses its extra pieces (its label sits on the first one, so nothing is lost for
scoring); both counts are printed when non-zero.

TensorFlow is not imported here.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bertjax import config as config_lib
from bertjax import model as model_lib
from bertjax import multihost
from bertjax.data import fs
from bertjax.data import tasks as readers
from bertjax.data.errors import DataError
from bertjax.finetuning import features
from bertjax.finetuning import ner
from bertjax.finetuning import runner

SCHEMES = {"IOB1": ("B", "I"), "IOB2": ("B", "I"), "BIO": ("B", "I"),
           "IOBES": ("B", "I", "E", "S")}


class TokenTagger(nn.Module):
    """BERT encoder, dropout on every token's vector, then a dense layer to the tag logits.

    The encoder is named ``bert`` as in BertForPreTraining so pre-trained weights restore into
    it; the head (``classifier``) is always freshly initialised.
    """

    cfg: model_lib.BertConfig
    num_labels: int
    head_dropout: float = 0.1

    @nn.compact
    def __call__(self, input_ids: jax.Array, input_mask: jax.Array, segment_ids: jax.Array,
                 deterministic: bool = True, position_ids: jax.Array | None = None,
                 pack_ids: jax.Array | None = None,
                 cls_positions: jax.Array | None = None) -> jax.Array:
        """Returns float32 [B, L, num_labels] tag logits (packed rows, bertjax/finetuning/packing.py:
        positions and pack ids given; tokens keep their places, so cls_positions is unused)."""
        del cls_positions
        x, _ = model_lib.BertModel(self.cfg, name="bert")(
            input_ids, input_mask, segment_ids, position_ids, deterministic,
            pack_ids)  # [B, L, D]
        x = nn.Dropout(self.head_dropout)(x, deterministic=deterministic)
        init = nn.initializers.truncated_normal(stddev=self.cfg.initializer_range)
        out = nn.Dense(self.num_labels, dtype=self.cfg.compute_dtype,
                       param_dtype=self.cfg.weight_dtype,
                       kernel_init=nn.with_logical_partitioning(init, ("embed", "classes")),
                       bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                              ("classes",)),
                       name="classifier")(x)
        return out.astype(jnp.float32)  # [B, L, C]


# ------------------------------------------------------------------------------------- data


def check_tags(sentences: Sequence[dict], scheme: str, path: str) -> None:
    """Every tag is "O" or PREFIX-TYPE with a prefix of ``scheme``, and the tags of a sentence
    follow the scheme's order: in IOB2 an I-X continues a B-X or I-X; in IOBES a B-X or I-X
    goes on with I-X or E-X, and I-X and E-X continue one (IOB1, whose entities may start with
    I-, has no order to check). Else one DataError line naming the file and line."""
    prefixes = SCHEMES[scheme]
    for s in sentences:
        for i, tag in enumerate(s["tags"]):
            prefix, sep, etype = tag.partition("-")
            if tag == "O" or (sep and etype and prefix in prefixes):
                continue
            raise DataError(f"{_where(path, s, i)}: tag {tag!r} of word {s['words'][i]!r} is "
                            f"not O or {'/'.join(p + '-TYPE' for p in prefixes)} as scheme "
                            f"{scheme} allows; fix the line or set --config.data.scheme")
        if scheme != "IOB1":
            _check_order(s, scheme, path)


def _check_order(sentence: dict, scheme: str, path: str) -> None:
    """The tags of one sentence (prefixes already checked) in the order ``scheme`` needs."""
    tags = sentence["tags"]
    for i, tag in enumerate(tags):
        prefix, _, etype = tag.partition("-")
        before = tags[i - 1] if i else "O"
        after = tags[i + 1] if i + 1 < len(tags) else "O"
        continues = before in (f"B-{etype}", f"I-{etype}")
        if prefix in ("I", "E") and not continues:
            place = f"follows {before!r}" if i else "starts its sentence"
            fix = ("; entities here start with I- as in IOB1 (original CoNLL-2003): pass "
                   "--config.data.scheme=IOB1, which reads them" if scheme != "IOBES" and
                   prefix == "I" else "; fix the tags")
            raise DataError(f"{_where(path, sentence, i)}: tag {tag!r} of word "
                            f"{sentence['words'][i]!r} {place}, but in {scheme} an "
                            f"{prefix}-{etype} continues a B-{etype} or I-{etype}{fix}")
        if scheme == "IOBES" and prefix in ("B", "I") and after not in (f"I-{etype}",
                                                                         f"E-{etype}"):
            raise DataError(f"{_where(path, sentence, i)}: tag {tag!r} of word "
                            f"{sentence['words'][i]!r} is followed by {after!r}, but in IOBES "
                            f"an entity that does not end here goes on with I-{etype} or "
                            f"E-{etype} (one word alone is S-{etype}); fix the tags")


def _where(path: str, sentence: dict, word: int) -> str:
    """file:line of a word (CoNLL sentences are consecutive lines), or the TFDS example."""
    name, _, line = sentence["guid"].rpartition(":")
    if path.startswith(runner.TFDS_PREFIX) or not line.isdigit():
        return f"{path} {sentence['guid']} word {word}"
    return f"{path}:{int(line) + word}"


def windows(pieces: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Word ranges [start, end) of consecutive windows whose pieces fit in ``budget``.

    Args:
      pieces: per word its number of sub-tokens (a word over ``budget`` counts as ``budget``).
      budget: sub-tokens per window (max_seq_length - 2 for [CLS] and [SEP]).

    Returns:
      Ranges covering every word once, in order; one (0, 0) range for an empty sentence.
    """
    out, start, used = [], 0, 0
    for w, n in enumerate(pieces):
        n = min(n, budget)
        if used + n > budget:
            out.append((start, w))
            start, used = w, 0
        used += n
    out.append((start, len(pieces)))
    return out


def encode(sentences: Sequence[dict], tok: features.TaskTokenizer, max_length: int,
           label_ids: dict[str, int] | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Featurises sentences into rows of at most ``max_length`` tokens.

    Args:
      sentences: [{"words", "tags"}] (tags unused when ``label_ids`` is None).
      tok: see features.load_tokenizer.
      max_length: L, including [CLS] and [SEP].
      label_ids: tag -> id, or None for unlabelled data (labels all -1).

    Returns:
      (arrays, meta): input_ids, input_mask, segment_ids, labels int32 [R, L]; meta holds
      "sentence" [R] (the row's sentence), "word_ids" [R, L] (sentence-level word index of each
      token, -1 for special tokens and padding), "split" and "cut" counts.
    """
    budget = max_length - 2
    flat = [w for s in sentences for w in s["words"]]
    pieces_flat = tok.encode_batch(flat) if flat else []
    rows: list[tuple[int, list[int], list[int], list[int]]] = []  # sentence, ids, words, labels
    split = cut = 0
    k = 0
    for si, s in enumerate(sentences):
        pieces = pieces_flat[k:k + len(s["words"])]
        k += len(s["words"])
        cut += sum(len(p) > budget for p in pieces)
        spans = windows([len(p) for p in pieces], budget)
        split += len(spans) > 1
        tags = [label_ids[t] for t in s["tags"]] if label_ids is not None else None
        for start, end in spans:
            ids, word_ids = [], []
            for w in range(start, end):
                ids += pieces[w][:budget]
                word_ids += [w] * len(pieces[w][:budget])
            labels = (ner.align_labels(tags, word_ids, ignore_index=-1).tolist()
                      if tags is not None else [-1] * len(ids))
            rows.append((si, ids, word_ids, labels))
    n = len(rows)
    arrays = {key: np.zeros((n, max_length), np.int32) for key in features.FEATURE_KEYS}
    arrays["input_ids"][:] = tok.pad_id
    arrays["labels"] = np.full((n, max_length), -1, np.int32)
    word_ids = np.full((n, max_length), -1, np.int32)
    for r, (_, ids, words, labels) in enumerate(rows):
        t = len(ids)
        arrays["input_ids"][r, :t + 2] = [tok.cls_id] + ids + [tok.sep_id]
        arrays["input_mask"][r, :t + 2] = 1
        arrays["labels"][r, 1:t + 1] = labels
        word_ids[r, 1:t + 1] = words
    meta = {"sentence": np.array([r[0] for r in rows], np.int32), "word_ids": word_ids,
            "split": split, "cut": cut}
    return arrays, meta


# ----------------------------------------------------------------------------------- family


class TaggingFamily:
    """Token classification for the runner (bertjax.finetuning.runner.Family)."""

    name = "ner"
    metric_names = ("f1", "precision", "recall", "accuracy")
    packs = "tokens"  # packed rows (config.data.examples_per_row > 1; tasks/packing.py)
    token_keys = ("labels",)

    def __init__(self):
        self.labels: tuple[str, ...] = ()
        self.scheme = "IOB2"
        self.head_dropout = 0.1

    def prepare(self, config: Any) -> None:
        d = config.data
        self.scheme = str(d.get("scheme", "IOB2") or "IOB2").upper()
        if self.scheme not in SCHEMES:
            raise config_lib.ConfigError(f"config.data.scheme={d.scheme!r}; expected one of "
                                         f"{sorted(SCHEMES)}")
        self.labels = tuple(x.strip() for x in d.labels.split(",") if x.strip())
        twice = sorted({x for x in self.labels if self.labels.count(x) > 1})
        if twice:
            raise config_lib.ConfigError(
                f"config.data.labels={d.labels!r} lists {', '.join(map(repr, twice))} more than "
                "once; list every tag once, comma-separated (e.g. O,B-LOC,I-LOC)")
        if self.labels and "O" not in self.labels:
            raise config_lib.ConfigError(f"config.data.labels={d.labels!r} has no 'O'; list "
                                         "every tag, comma-separated (e.g. O,B-LOC,I-LOC)")
        self.head_dropout = config.head_dropout
        tfds_name = d.get("tfds", "")
        if tfds_name and tfds_name.split(":")[0].split("/")[0] != "conll2003":
            raise config_lib.ConfigError(f"config.data.tfds={tfds_name!r}; token tagging reads "
                                         "TFDS conll2003, or CoNLL files")

    @property
    def task_name(self) -> str:
        return "ner"

    def recorded_settings(self) -> dict[str, Any]:
        """The label list (perhaps read from the training file), saved with the checkpoint so
        eval_only reads the same ids."""
        return {"data.labels": ",".join(self.labels)}

    def make_model(self, cfg: model_lib.BertConfig) -> nn.Module:
        return TokenTagger(cfg, len(self.labels), self.head_dropout)

    def _sentences(self, config: Any, path: str, labelled: bool) -> list[dict]:
        d = config.data
        word_col, tag_col = int(d.get("word_column", 0)), int(d.get("tag_column", -1))
        if labelled:
            sentences = runner.examples(config, path,
                                        lambda p: readers.read_conll(p, tag_col, word_col))
        else:  # words only: a test file may have no tag column
            sentences = runner.examples(config, path,
                                        lambda p: readers.read_conll(p, word_col, word_col))
            for s in sentences:
                s["tags"] = ["-"] * len(s["words"])
            return sentences
        check_tags(sentences, self.scheme, path)
        if self.scheme == "IOB1":
            for s in sentences:
                s["tags"] = ner.iob1_to_iob2(s["tags"])
        return sentences

    def read(self, config: Any, tok: features.TaskTokenizer, path: str,
             labelled: bool) -> runner.Split:
        sentences = self._sentences(config, path, labelled)
        if not sentences:
            raise DataError(f"{path}: no sentences; expected CoNLL 'word ... tag' lines")
        if labelled and not self.labels:  # the first labelled file read is the training file
            tags = {t for s in sentences for t in s["tags"]} - {"O"}
            self.labels = ("O",) + tuple(sorted(tags))
        label_ids = {t: i for i, t in enumerate(self.labels)}
        if labelled:
            for s in sentences:
                for i, t in enumerate(s["tags"]):
                    if t not in label_ids:
                        raise DataError(
                            f"{_where(path, s, i)}: tag {t!r} is not in the label set "
                            f"{list(self.labels)} (from the training file or "
                            "config.data.labels); add it to --config.data.labels")
        arrays, meta = encode(sentences, tok, config.max_seq_length,
                              label_ids if labelled else None)
        meta["sentences"] = sentences
        if (meta["split"] or meta["cut"]) and multihost.is_chief():
            print(f"{path}: {meta['split']} sentences longer than max_seq_length="
                  f"{config.max_seq_length} split into windows; {meta['cut']} words cut to "
                  "their first pieces", flush=True)
        return runner.Split(arrays, meta=meta, num_examples=len(sentences))

    def loss_stats(self, outputs: jax.Array, batch: dict) -> dict[str, jax.Array]:
        labels = batch["labels"]  # [B, L], -1 where no word starts
        mask = batch["example_mask"]
        if "pack_ids" in batch:  # packed rows: a token takes its example slot's mask [B, M]
            slot = jnp.maximum(batch["pack_ids"] - 1, 0)
            mask = jnp.take_along_axis(mask, slot, axis=1) * (batch["pack_ids"] > 0)
        else:
            mask = mask[:, None]
        valid = (labels >= 0).astype(jnp.float32) * mask
        per = optax.softmax_cross_entropy_with_integer_labels(outputs, jnp.maximum(labels, 0))
        correct = (outputs.argmax(-1) == labels).astype(jnp.float32)
        return {"loss_sum": jnp.sum(per * valid), "accuracy": jnp.sum(correct * valid),
                "count": jnp.sum(valid)}

    def predicted_tags(self, outputs: np.ndarray, split: runner.Split) -> list[list[str]]:
        """Per sentence the predicted tag of each word (its first sub-token's argmax; "O" for a
        word that got no token at all)."""
        meta = split.meta
        preds = outputs.argmax(-1)  # [R, L]
        out = [["O"] * len(s["words"]) for s in meta["sentences"]]
        for r, si in enumerate(meta["sentence"]):
            tags = [self.labels[p] for p in preds[r]]
            # "" for the words of the sentence's other windows
            words = ner.word_predictions(tags, meta["word_ids"][r], num_words=len(out[si]),
                                         fill="")
            for w, t in enumerate(words):
                if t:
                    out[si][w] = t
        return out

    def score(self, outputs: np.ndarray, split: runner.Split) -> dict[str, Any]:
        gold = [s["tags"] for s in split.meta["sentences"]]
        pred = self.predicted_tags(outputs, split)
        result = ner.entity_scores(gold, pred)
        # seqeval's strict mode beside it: only well-formed chunks of the scheme count (IOB1
        # was read as IOB2), so a prediction starting an entity with I- is not one
        strict = ner.entity_scores(gold, pred, "IOBES" if self.scheme == "IOBES" else "IOB2")
        words = sum(len(g) for g in gold)
        right = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
        return {"f1": result["f1"], "precision": result["precision"],
                "recall": result["recall"], "accuracy": right / max(words, 1),
                "strict_f1": strict["f1"], "strict_precision": strict["precision"],
                "strict_recall": strict["recall"], "per_type": result["per_type"]}

    def write_predictions(self, directory: str, name: str, outputs: np.ndarray,
                          split: runner.Split) -> None:
        sentences = split.meta["sentences"]
        # CoNLL columns are space-separated: a word TFDS or a file holds with spaces is joined.
        words = [["_".join(w.split()) or "_" for w in s["words"]] for s in sentences]
        path = os.path.join(directory, f"{name}.conll")
        with fs.atomic_write(path) as f:
            ner.write_conll(f, words, [s["tags"] for s in sentences],
                            self.predicted_tags(outputs, split))
