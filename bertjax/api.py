"""bertjax from Python: load any run directory and use the model it holds.

    import bertjax
    m = bertjax.load("runs/bert_tiny")          # a pre-training run, one step of it, an import,
                                                # or a fine-tuning run
    m.tokenizer.special_ids                     # {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, ...}
    m.fill_mask(["the [MASK] of the file"], top_k=5)
    m.embed(["a sentence", "another"], pooling="mean")   # [2, D], as python -m bertjax.embed
    m.encode(["a sentence"])                    # last hidden states [1, L, D] and their mask
    bertjax.load("runs/sst2").predict(["a fine film"])   # fine-tuned runs: labels and scores

Everything here goes through the same code as the commands: the run directory is read by
bertjax.rundir, parameters are restored by the kit (bertjax.train.restore_params), texts are
featurised by the fine-tuning features and families, embeddings come from the embedder of
``bertjax.embed``, and ``predict`` decodes with the family that wrote the run's ``--eval_only``
predictions, so the numbers are the command line's.

Parameters are plain (on one device) by default; ``load(path, sharded=True)`` places them on a
mesh of every device by the run's logical sharding rules.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bertjax import config as config_lib
from bertjax import model as model_lib
from bertjax import rundir
from bertjax import sharding
from bertjax import train
from bertjax.finetuning import features

MASK_TOKEN = "[MASK]"


class Tokenizer:
    """The run's own tokenizer (its WordPiece vocabulary or sentencepiece model), with the
    special tokens' ids by name."""

    def __init__(self, task_tokenizer: features.TaskTokenizer):
        self._tok = task_tokenizer
        self.source = task_tokenizer.source
        self.vocab_size = task_tokenizer.vocab_size
        self.cls_id, self.sep_id, self.pad_id = (task_tokenizer.cls_id, task_tokenizer.sep_id,
                                                 task_tokenizer.pad_id)
        self.unk_id, self.mask_id = task_tokenizer.unk_id, task_tokenizer.mask_id
        self.special_ids = {"[PAD]": self.pad_id, "[UNK]": self.unk_id, "[CLS]": self.cls_id,
                            "[SEP]": self.sep_id, "[MASK]": self.mask_id}

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Piece ids of each text, without [CLS]/[SEP]; "[MASK]" in a text is the mask id."""
        out = []
        for text in texts:
            parts = text.split(MASK_TOKEN)
            ids: list[int] = []
            for i, part in enumerate(parts):
                if i:
                    ids.append(self.mask_id)
                if part.strip():
                    ids.extend(self._tok.encode_batch([part])[0])
            out.append(ids)
        return out

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """The piece of each id (special tokens by their names)."""
        names = {v: k for k, v in self.special_ids.items()}
        texts = self._tok.token_texts(ids)
        return [names.get(int(i), t if t is not None else "[UNK]") for i, t in zip(ids, texts)]


@dataclasses.dataclass
class Model:
    """A loaded run: its kind, sizes, tokenizer and parameters (see ``load``)."""

    path: str
    kind: str  # "pretraining", "finetuning" or "import"
    config: model_lib.BertConfig
    tokenizer: Tokenizer
    params: Any
    saved: dict  # the run config saved with the checkpoint (upgraded)
    mesh: Any
    rules: tuple
    max_length: int = 128

    # ---------------------------------------------------------------------- the encoder

    def _rows(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, np.ndarray]:
        length = max_length or self.max_length
        if not 3 <= length <= self.config.max_position_embeddings:
            raise config_lib.ConfigError(
                f"max_length={length}; expected 3..{self.config.max_position_embeddings} (the "
                "model's positions)")
        examples = [{"text_a": t, "text_b": None, "label": None} for t in texts]
        rows = features.encode(examples, _MaskAware(self.tokenizer), length)
        return {k: rows[k] for k in features.FEATURE_KEYS}

    def encode(self, texts: Sequence[str], max_length: int | None = None,
               batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """The encoder's last hidden states.

        Returns:
          (hidden float32 [N, L, D], input_mask int32 [N, L]: 1 for real tokens).
        """
        rows = self._rows(texts, max_length)
        fn = self._jitted(f"encode{batch_size}", _encode_step,
                          model_lib.BertModel(self.config, name="bert"), rows, batch_size,
                          self.params["bert"])
        return _batched(fn, self.params["bert"], rows, batch_size), rows["input_mask"]

    def embed(self, texts: Sequence[str], pooling: str = "mean", normalize: bool = False,
              max_length: int | None = None, batch_size: int = 64) -> np.ndarray:
        """Sentence embeddings [N, D], exactly as ``python -m bertjax.embed`` computes them
        (the same embedder: pooling "mean" over real tokens or "cls")."""
        from bertjax.finetuning import embedding

        settings = embedding.Settings(init_from=self.path, pooling=pooling, normalize=normalize,
                                      max_seq_length=max_length or self.max_length,
                                      batch_size=batch_size, dtype=self.config.dtype)
        embedders = self.__dict__.setdefault("_embedders", {})
        if settings not in embedders:  # this model's parameters, not a second restore
            embedders[settings] = embedding.Embedder(embedding.check(settings), self.mesh,
                                                     self.params)
        return embedders[settings].embed(list(texts))

    def fill_mask(self, texts: Sequence[str], top_k: int = 5,
                  max_length: int | None = None) -> list:
        """The most likely pieces at each "[MASK]" of each text, by the MLM head.

        Returns:
          Per text: for one mask, a list of ``top_k`` {"token", "id", "score"} (probability,
          highest first); for several masks, one such list per mask.

        Raises:
          ConfigError: a fine-tuned run (no MLM head) or a text without "[MASK]".
        """
        if self.kind == "finetuning" or "mlm" not in self.params:
            raise config_lib.ConfigError(
                f"{self.path} is a {self.kind} run without an MLM head; fill_mask needs a "
                "pre-training run or an import with its pre-training heads")
        rows = self._rows(texts, max_length)
        positions = [np.flatnonzero(r == self.tokenizer.mask_id) for r in rows["input_ids"]]
        for text, p in zip(texts, positions):
            if not len(p):
                raise config_lib.ConfigError(f"fill_mask: {text!r} holds no {MASK_TOKEN} (or it "
                                             "was cut at max_length)")
        width = max(len(p) for p in positions)
        rows["masked_lm_positions"] = np.zeros((len(texts), width), np.int32)
        for i, p in enumerate(positions):
            rows["masked_lm_positions"][i, :len(p)] = p
        model = model_lib.BertForPreTraining(self.config)
        fn = self._jitted(f"mlm{width}", _mlm_step, model, rows, 8, self.params)
        logits = _batched(fn, self.params, rows, 8)  # [N, M, V]
        probs = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
        probs = np.asarray(probs)
        out = []
        for i, p in enumerate(positions):
            per_mask = []
            for m in range(len(p)):
                best = np.argsort(-probs[i, m], kind="stable")[:top_k]
                per_mask.append([{"token": self.tokenizer.tokens([int(j)])[0], "id": int(j),
                                  "score": float(probs[i, m, j])} for j in best])
            out.append(per_mask[0] if len(per_mask) == 1 else per_mask)
        return out

    # ---------------------------------------------------------------- fine-tuned runs

    def predict(self, inputs: Sequence[Any], contexts: Sequence[str] | None = None,
                batch_size: int = 64) -> list:
        """Predictions of a fine-tuned run, decoded as its ``--eval_only`` predictions are.

        Args:
          inputs: classification/regression: texts, or (text_a, text_b) pairs; token tagging:
            texts (split on whitespace) or lists of words; span QA: questions.
          contexts: span QA: the context of each question.

        Returns:
          classification: [{"label", "score", "scores": {label: probability}}]; regression:
          [{"score"}]; tagging: [{"words", "tags", "entities": [{"type", "start", "end",
          "words"}]}] (word indices, end exclusive); span QA: [{"answer", "score"}] ("" when a
          SQuAD v2.0 model answers that there is none).

        Raises:
          ConfigError: not a fine-tuning run.
        """
        if self.kind != "finetuning":
            raise config_lib.ConfigError(f"{self.path} is a {self.kind} run; predict needs a "
                                         "fine-tuning run (python -m bertjax.finetune)")
        return _predict(self, list(inputs), None if contexts is None else list(contexts),
                        batch_size)

    # ------------------------------------------------------------------------ helpers

    def _jitted(self, key: str, step: Any, model: Any, rows: dict, batch_size: int,
                params: Any) -> tuple[Any, dict]:
        """(the step jitted by the kit for ``params`` as placed, its batch shardings), once
        per key."""
        cache = self.__dict__.setdefault("_steps", {})
        if key not in cache:
            like = {k: np.zeros((batch_size,) + v.shape[1:], v.dtype) for k, v in rows.items()}
            fns = train.StepFns(model=model, mesh=self.mesh, rules=self.rules,
                                param_shardings=jax.tree.map(lambda x: x.sharding, params))
            cache[key] = (train.jit_eval_step(fns, like, step), train.batch_shardings(fns, like))
        return cache[key]


class _MaskAware:
    """A TaskTokenizer whose encode_batch turns "[MASK]" into the mask id (featurisation)."""

    def __init__(self, tok: Tokenizer):
        self._api_tok = tok
        inner = tok._tok
        self.cls_id, self.sep_id, self.pad_id = inner.cls_id, inner.sep_id, inner.pad_id
        self.vocab_size, self.source, self.path = inner.vocab_size, inner.source, inner.path

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._api_tok.encode(texts)

    def token_texts(self, ids: Sequence[int]) -> list[str | None]:
        return self._api_tok._tok.token_texts(ids)


def _encode_step(params: Any, batch: dict, fns: train.StepFns) -> jax.Array:
    seq, _ = fns.model.apply({"params": params}, batch["input_ids"], batch["input_mask"],
                             batch["segment_ids"], None, True)
    return seq.astype(jnp.float32)  # [B, L, D]


def _mlm_step(params: Any, batch: dict, fns: train.StepFns) -> jax.Array:
    mlm_logits, _ = fns.model.apply({"params": params}, batch["input_ids"], batch["input_mask"],
                                    batch["segment_ids"], batch["masked_lm_positions"],
                                    deterministic=True)
    return mlm_logits.astype(jnp.float32)  # [B, M, V]


def _batched(fn_and_sh: tuple, params: Any, rows: dict, batch_size: int) -> np.ndarray:
    """Outputs of every row, in order: batches of ``batch_size`` (the last padded)."""
    from bertjax import multihost

    fn, batch_sh = fn_and_sh
    n, outs = len(rows["input_ids"]), []
    for start in range(0, n, batch_size):
        chunk = {k: v[start:start + batch_size] for k, v in rows.items()}
        pad = batch_size - len(chunk["input_ids"])
        if pad:
            chunk = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) for k, v in
                     chunk.items()}
        outs.append(np.asarray(jax.device_get(fn(params, multihost.global_batch(chunk,
                                                                                  batch_sh)))))
    return np.concatenate(outs)[:n]


def _mesh(sharded: bool) -> Any:
    if not sharded:
        return sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    return sharding.make_mesh(*sharding.mesh_shape(-1, 1, 1, jax.device_count()))


def load(path: str, sharded: bool = False, max_length: int = 128) -> Model:
    """Loads a run directory: a pre-training run (its newest complete step), one step of it
    (WORKDIR/checkpoints/N), an import (python -m bertjax.convert --from=...), or a fine-tuning
    run (its kept checkpoint).

    Args:
      path: the directory.
      sharded: place the parameters on a mesh of every device by the run's logical rules
        (default: plain, on the first device).
      max_length: the default rows' length for encode / embed / fill_mask (at most the
        model's positions).

    Returns:
      A Model with ``tokenizer``, ``config`` (model sizes), ``params`` and the methods above.

    Raises:
      ConfigError / DataError: one line when ``path`` is not a run or its tokenizer is gone.
    """
    run = rundir.resolve(path, "bertjax.load")
    saved = ml_collections.ConfigDict(run.saved) if run.saved else config_lib.base_config()
    cfg = dataclasses.replace(run.model_config(), hidden_dropout=0.0, attention_dropout=0.0)
    casing = {"true": True, "false": False}.get(str(run.saved.get("do_lower_case", "")).lower())
    tok = Tokenizer(features.load_tokenizer(path, "", casing))
    rules = tuple(tuple(r) for r in saved.sharding.rules) if "sharding" in saved else tuple(
        sharding.DEFAULT_RULES)
    mesh = _mesh(sharded)
    if run.kind == "finetuning":
        family = _family(saved)
        model, inputs = family.make_model(cfg), train.task_inputs(8)
    else:
        model = model_lib.BertForPreTraining(cfg)
        inputs = train.pretraining_inputs()
    abstract, shardings = train.param_shardings(model, inputs, mesh, rules)
    params = train.restore_params(path, abstract, shardings, "bertjax.load")
    return Model(path=run.path, kind=run.kind, config=cfg, tokenizer=tok, params=params,
                 saved=run.saved, mesh=mesh, rules=rules,
                 max_length=min(max_length, cfg.max_position_embeddings))


def _family(saved: Any) -> Any:
    """The fine-tuning family of a saved run config, prepared as the run's eval_only is."""
    from bertjax.finetuning import families

    family = families.get(saved)
    if hasattr(family, "prepare"):
        family.prepare(saved)
    return family


def _predict(m: Model, inputs: list, contexts: list | None, batch_size: int) -> list:
    """Featurise in memory as the family's reader would, run the family's eval step, decode."""
    from bertjax.finetuning import families, runner, splits

    saved = ml_collections.ConfigDict(m.saved)
    family = _family(saved)
    name = families.family_name(saved)
    length = saved.max_seq_length
    tok = m.tokenizer._tok
    if name == "classify":
        pairs = [x if isinstance(x, (tuple, list)) else (x, None) for x in inputs]
        examples = [{"text_a": a, "text_b": b, "label": None} for a, b in pairs]
        arrays = features.encode(examples, tok, length, family.task.regression)
        split = runner.Split(arrays, num_examples=len(examples))
    elif name == "ner":
        from bertjax.finetuning import tagging

        sentences = [{"words": list(x) if isinstance(x, (list, tuple)) else x.split(),
                      "tags": []} for x in inputs]
        for s in sentences:
            s["tags"] = ["O"] * len(s["words"])
        arrays, meta = tagging.encode(sentences, tok, length, None)
        meta["sentences"] = sentences
        split = runner.Split(arrays, meta=meta, num_examples=len(sentences))
    else:
        from bertjax.finetuning import qa_features

        if contexts is None or len(contexts) != len(inputs):
            raise config_lib.ConfigError("predict of a span-QA run needs one context per "
                                         "question: predict(questions, contexts=[...])")
        examples = [{"id": str(i), "title": "", "context": c, "question": q, "answers": [],
                     "is_impossible": False} for i, (q, c) in enumerate(zip(inputs, contexts))]
        d = saved.data
        feats = qa_features.featurise(examples, tok, length, d.max_query_length, d.doc_stride)
        split = runner.Split(feats.arrays, meta=feats.questions, num_examples=len(examples))
    model = family.make_model(m.config)
    like = runner.pad_targets({k: v[:1] for k, v in split.arrays.items()},
                              _targets_like(family, split, length))
    like = {k: np.zeros((batch_size,) + v.shape[1:], v.dtype) for k, v in like.items()}
    like["example_mask"] = np.zeros(batch_size, np.float32)
    fns = train.StepFns(model=model, mesh=m.mesh, rules=m.rules,
                        param_shardings=jax.tree.map(lambda x: x.sharding, m.params))
    _, eval_fn = runner.jit_steps(fns, like, family.loss_stats)
    arrays = runner.pad_targets(split.arrays, like)
    outputs, _ = splits.predict(eval_fn, m.params, arrays, batch_size,
                                train.batch_shardings(fns, like))
    return _decode(name, family, outputs, split, inputs)


def _targets_like(family: Any, split: Any, length: int) -> dict[str, np.ndarray]:
    """Zero targets of the shapes the family's loss reads (an unlabelled split has none)."""
    n = 1
    return {"label": np.zeros(n, np.float32 if getattr(getattr(family, "task", None),
                                                        "regression", False) else np.int32),
            "labels": np.full((n, length), -1, np.int32),
            "start_positions": np.zeros(n, np.int32), "end_positions": np.zeros(n, np.int32)}


def _decode(name: str, family: Any, outputs: Any, split: Any, inputs: list) -> list:
    if name == "classify":
        task = family.task
        if task.regression:
            return [{"score": float(row[0])} for row in outputs]
        probs = np.asarray(jax.nn.softmax(jnp.asarray(outputs, jnp.float32), axis=-1))
        return [{"label": task.labels[int(p.argmax())], "score": float(p.max()),
                 "scores": {label: float(x) for label, x in zip(task.labels, p)}}
                for p in probs]
    if name == "ner":
        from bertjax.finetuning import ner

        tags = family.predicted_tags(outputs, split)
        out = []
        for s, t in zip(split.meta["sentences"], tags):
            spans = ner.entities(t)  # conlleval's chunks, as the entity scores count them
            out.append({"words": s["words"], "tags": t,
                        "entities": [{"type": e[0], "start": e[1], "end": e[2],
                                      "words": s["words"][e[1]:e[2]]} for e in spans]})
        return out
    answers = family.answers(outputs, split)
    out = []
    for i in range(len(inputs)):
        a = answers[str(i)]
        chosen = next((c for c in a.nbest if c.text == a.text), None)
        out.append({"answer": a.text,
                    "score": float(chosen.probability) if chosen else float("nan")})
    return out
