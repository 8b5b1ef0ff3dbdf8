"""Hugging Face BERT checkpoints <-> bertjax parameters, on plain dicts of numpy arrays.

One table, ``param_mapping(cfg)``, lists every (HF name, bertjax path, transform) row; import
(``params_from_hf``) and export (``params_to_hf``; ``encoder_to_hf`` for the encoder alone, as
an HF BertModel) all read it, so the directions cannot drift apart. Two HF names may map to
the same bertjax path: that is how weight tying is written down (the MLM decoder weight is the
word-embedding table, the decoder bias is ``cls.predictions.bias``). Import checks that tied
copies agree; export writes every copy.

A fine-tuned model (encoder + one dense head) maps to a transformers task class through
``task_mapping``: the table's encoder rows, then the head's (``TASK_CLASSES``:
BertForSequenceClassification, bertjax's mean-pooling classifier, BertForTokenClassification,
BertForQuestionAnswering); ``task_to_hf`` and ``task_from_hf`` are its two directions.

Layouts: a torch ``Linear`` stores its weight as [out, in], a flax kernel is [in, ..., out], so
weights are transposed; the attention kernels additionally split the hidden axis into heads:
query/key/value kernels are [D, H, K] with [H, K] biases and the attention output kernel is
[H, K, D] (shape letters as in bertjax/model.py).

Import is careful rather than forgiving: a shape mismatch raises naming the tensor and both
shapes; HF tensors that were not used and bertjax parameters that had no source are listed in
the returned ``ConversionReport``; nothing is dropped silently.

This module never imports torch or TensorFlow (a TPU host may have neither); torch tensors
passed in are converted by duck typing. Original TensorFlow checkpoints: bertjax/interop/tf1.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Iterator, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from bertjax import model as model_lib

Path = tuple[str, ...]

# HF activation name -> bertjax hidden_act. gelu_new, gelu_pytorch_tanh and gelu_fast are all
# 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))), written differently; "gelu" is the exact erf form.
_HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
}
_BERTJAX_TO_HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}

# Non-parameter buffers some transformers versions save; bertjax recomputes both.
_HF_BUFFERS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")

# Prefixes a bare BertModel state dict uses where BertForPreTraining has "bert.".
_ENCODER_PREFIXES = ("embeddings.", "encoder.", "pooler.")


def hf_config_to_bert(hf_config: Mapping[str, Any], **overrides: Any) -> model_lib.BertConfig:
    """Builds a bertjax BertConfig from a Hugging Face BERT ``config.json`` dict.

    Args:
      hf_config: the HF config as a dict (``json.load`` of config.json or ``config.to_dict()``).
      **overrides: bertjax-only fields (``dtype``, ``attention_impl``, ...) or replacements,
        e.g. ``hidden_dropout=0.0`` for evaluation.

    Returns:
      The matching model.BertConfig.

    Raises:
      ValueError: for an activation or position-embedding type bertjax does not implement, or a
        config without the sizes.
    """
    act = hf_config.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in _HF_ACTIVATIONS:
        raise ValueError(
            f"hf_config.hidden_act={act!r} has no bertjax equivalent; supported: "
            f"{sorted(_HF_ACTIVATIONS)} (add it to model._activation and mapping._HF_ACTIVATIONS)")
    pos_type = hf_config.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
        raise ValueError(f"hf_config.position_embedding_type={pos_type!r}; bertjax implements "
                         "only 'absolute' learned position embeddings")
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size")
    absent = [k for k in required if k not in hf_config]
    if absent:
        raise ValueError(f"hf_config lacks {absent}; pass the checkpoint's full config.json")
    def number(key: str, kind: type, default: Any = None) -> Any:
        value = hf_config.get(key, default)
        try:
            if isinstance(value, bool) or (kind is int and isinstance(value, float)
                                           and not value.is_integer()):
                raise ValueError
            return kind(value)
        except (ValueError, TypeError):
            what = "an integer" if kind is int else "a number"
            raise ValueError(f"hf_config.{key}={value!r} is not {what}; pass the checkpoint's "
                             "own config.json") from None

    fields = dict(
        vocab_size=number("vocab_size", int),
        hidden_size=number("hidden_size", int),
        num_layers=number("num_hidden_layers", int),
        num_heads=number("num_attention_heads", int),
        intermediate_size=number("intermediate_size", int),
        # The remaining defaults are transformers.BertConfig's own.
        max_position_embeddings=number("max_position_embeddings", int, 512),
        type_vocab_size=number("type_vocab_size", int, 2),
        hidden_dropout=number("hidden_dropout_prob", float, 0.1),
        attention_dropout=number("attention_probs_dropout_prob", float, 0.1),
        hidden_act=_HF_ACTIVATIONS[act],
        layer_norm_eps=number("layer_norm_eps", float, 1e-12),
        initializer_range=number("initializer_range", float, 0.02),
        tie_word_embeddings=bool(hf_config.get("tie_word_embeddings", True)),
    )
    fields.update(overrides)
    return model_lib.BertConfig(**fields)


def bert_to_hf_config(cfg: model_lib.BertConfig,
                      architecture: str = "BertForPreTraining") -> dict[str, Any]:
    """The HF ``config.json`` dict for a bertjax config (inverse of ``hf_config_to_bert``).

    Args:
      cfg: the bertjax model config.
      architecture: the transformers class the weights are for (``BertModel``: an encoder).

    Returns:
      A dict accepted by ``transformers.BertConfig(**d)``.
    """
    return {
        "model_type": "bert",
        "architectures": [architecture],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "hidden_dropout_prob": cfg.hidden_dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "hidden_act": _BERTJAX_TO_HF_ACTIVATION[cfg.hidden_act],
        "layer_norm_eps": cfg.layer_norm_eps,
        "initializer_range": cfg.initializer_range,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": cfg.tie_word_embeddings,
    }


class Transform(NamedTuple):
    """How one HF tensor becomes one bertjax parameter, and back.

    Attributes:
      hf_shape: the tensor's shape in the HF state dict.
      bertjax_shape: the parameter's shape in the bertjax tree.
      transpose: True for torch Linear weights ([out, in] against flax's [in, ..., out]).
    """

    hf_shape: tuple[int, ...]
    bertjax_shape: tuple[int, ...]
    transpose: bool

    def to_bertjax(self, x: np.ndarray) -> np.ndarray:
        x = x.T if self.transpose else x
        return np.ascontiguousarray(x.reshape(self.bertjax_shape))

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        # Undo the head split first: bertjax [D, H, K] -> [D, H*K] -> torch [H*K, D].
        if self.transpose:
            return np.ascontiguousarray(x.reshape(self.hf_shape[::-1]).T)
        return np.ascontiguousarray(x.reshape(self.hf_shape))


class Row(NamedTuple):
    """One line of the mapping table."""

    hf_name: str
    path: Path
    transform: Transform


def _linear(hf: str, path: Path, n_in: int, n_out: int, kernel_shape: tuple | None = None,
            bias_shape: tuple | None = None) -> Iterator[Row]:
    """The rows of one dense layer: torch Linear ``hf`` [out, in] <-> flax Dense ``path``."""
    yield Row(f"{hf}.weight", path + ("kernel",),
              Transform((n_out, n_in), kernel_shape or (n_in, n_out), True))
    yield Row(f"{hf}.bias", path + ("bias",), Transform((n_out,), bias_shape or (n_out,), False))


def param_mapping(cfg: model_lib.BertConfig) -> Iterator[Row]:
    """Yields the complete HF BertForPreTraining <-> bertjax BertForPreTraining table.

    The first row for a bertjax path is its primary source; later rows with the same path are
    tied copies (HF keeps them as separate state-dict entries that share storage).

    Args:
      cfg: the model config; sizes determine the shapes in each row's transform.

    Yields:
      Row(hf_name, bertjax path tuple, Transform).
    """
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    h, k = cfg.num_heads, cfg.head_dim
    linear = _linear

    def norm(hf: str, path: Path):
        yield Row(f"{hf}.weight", path + ("scale",), Transform((d,), (d,), False))
        yield Row(f"{hf}.bias", path + ("bias",), Transform((d,), (d,), False))

    def table(hf: str, path: Path, rows: int):
        yield Row(f"{hf}.weight", path + ("embedding",), Transform((rows, d), (rows, d), False))

    emb = ("bert", "embeddings")
    yield from table("bert.embeddings.word_embeddings", emb + ("word_embeddings",), v)
    yield from table("bert.embeddings.position_embeddings", emb + ("position_embeddings",),
                     cfg.max_position_embeddings)
    yield from table("bert.embeddings.token_type_embeddings", emb + ("token_type_embeddings",),
                     cfg.type_vocab_size)
    yield from norm("bert.embeddings.LayerNorm", emb + ("layer_norm",))
    for i in range(cfg.num_layers):
        hf, jx = f"bert.encoder.layer.{i}", ("bert", f"layer_{i}")
        for name in ("query", "key", "value"):
            yield from linear(f"{hf}.attention.self.{name}", jx + ("attention", name), d, d,
                              kernel_shape=(d, h, k), bias_shape=(h, k))
        yield from linear(f"{hf}.attention.output.dense", jx + ("attention", "out"), d, d,
                          kernel_shape=(h, k, d))
        yield from norm(f"{hf}.attention.output.LayerNorm", jx + ("attention_norm",))
        yield from linear(f"{hf}.intermediate.dense", jx + ("intermediate",), d, f)
        yield from linear(f"{hf}.output.dense", jx + ("output",), f, d)
        yield from norm(f"{hf}.output.LayerNorm", jx + ("output_norm",))
    yield from linear("bert.pooler.dense", ("bert", "pooler"), d, d)
    yield from linear("cls.predictions.transform.dense", ("mlm", "transform"), d, d)
    yield from norm("cls.predictions.transform.LayerNorm", ("mlm", "transform_norm"))
    yield Row("cls.predictions.bias", ("mlm_bias",), Transform((v,), (v,), False))
    # Tied copies: bertjax's decoder is Embed.attend on the word table (or, untied, its own
    # mlm_decoder matrix) plus mlm_bias.
    decoder = emb + ("word_embeddings", "embedding") if cfg.tie_word_embeddings else (
        "mlm_decoder",)
    yield Row("cls.predictions.decoder.weight", decoder, Transform((v, d), (v, d), False))
    yield Row("cls.predictions.decoder.bias", ("mlm_bias",), Transform((v,), (v,), False))
    yield from linear("cls.seq_relationship", ("nsp",), d, 2)


@dataclasses.dataclass
class ConversionReport:
    """What ``params_from_hf`` did with each tensor.

    Attributes:
      used: HF names that supplied a parameter (tied copies included: they were checked equal).
      unused: HF names that map to nothing in bertjax (e.g. a fine-tuning classifier).
      buffers: non-parameter HF buffers that bertjax recomputes (position_ids, token_type_ids).
      missing: bertjax paths ("a/b/c") with no HF source, kept from ``init_params``.
    """

    used: list[str] = dataclasses.field(default_factory=list)
    unused: list[str] = dataclasses.field(default_factory=list)
    buffers: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        return (f"{len(self.used)} HF tensors used, {len(self.unused)} unused {self.unused}, "
                f"{len(self.buffers)} buffers skipped, {len(self.missing)} bertjax params kept "
                f"from init {self.missing}")


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; duck-typed so torch is never imported here
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16 view of torch storage
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _canonical_name(name: str) -> str:
    """Maps the spellings HF checkpoints use onto the BertForPreTraining names of the table."""
    if name.startswith(_ENCODER_PREFIXES):
        name = "bert." + name
    # Checkpoints from the pytorch-pretrained-bert era call LayerNorm's parameters gamma/beta.
    if name.endswith("LayerNorm.gamma"):
        name = name[: -len("gamma")] + "weight"
    elif name.endswith("LayerNorm.beta"):
        name = name[: -len("beta")] + "bias"
    return name


def expected_params(cfg: model_lib.BertConfig) -> dict[Path, jax.ShapeDtypeStruct]:
    """Flat {path: shape/dtype} of bertjax's BertForPreTraining, traced without computing."""
    def init():
        ids = jnp.zeros((1, 1), jnp.int32)
        variables = model_lib.BertForPreTraining(cfg).init(
            jax.random.key(0), ids, jnp.ones_like(ids), ids, ids)
        return nn.meta.unbox(variables["params"])
    return traverse_util.flatten_dict(jax.eval_shape(init))


def _checked_table(cfg: model_lib.BertConfig) -> list[Row]:
    """The mapping table, verified to cover model.py's parameters exactly (it may change)."""
    rows = list(param_mapping(cfg))
    expected = expected_params(cfg)
    mapped = {r.path for r in rows}
    if mapped != set(expected):
        raise RuntimeError(
            "convert.param_mapping is out of date with bertjax/model.py: model params without a "
            f"row {sorted('/'.join(p) for p in set(expected) - mapped)}, rows for no model param "
            f"{sorted('/'.join(p) for p in mapped - set(expected))}")
    for r in rows:
        if tuple(expected[r.path].shape) != r.transform.bertjax_shape:
            raise RuntimeError(
                f"convert.param_mapping row {r.hf_name}: shape {r.transform.bertjax_shape} but "
                f"model.py creates {'/'.join(r.path)} with {tuple(expected[r.path].shape)}")
    return rows


def params_from_hf(tensors: Mapping[str, Any], cfg: model_lib.BertConfig,
                   init_params: Any | None = None) -> tuple[dict[str, Any], ConversionReport]:
    """Imports an HF BertModel / BertForPreTraining state dict into bertjax parameters.

    Names may carry the "bert." prefix (BertForPreTraining, BertForMaskedLM, ...) or not (a
    bare BertModel); "LayerNorm.gamma/beta" spellings are accepted. Heads absent from the
    checkpoint (a BertModel has no MLM/NSP head) are taken from ``init_params`` with a warning.

    Args:
      tensors: HF state dict, name -> numpy array (torch tensors are accepted too).
      cfg: the bertjax config the checkpoint must match (see ``hf_config_to_bert``).
      init_params: a bertjax params tree (boxed or not), e.g. ``model.init(...)["params"]``,
        supplying parameters the checkpoint lacks, or a callable taking the list of missing
        paths and returning such a tree (so a big model is initialised only when, and only as
        far as, needed). Required only when something is missing.

    Returns:
      (params, report): params is a nested dict of numpy arrays in ``cfg.param_dtype`` with
      the structure of ``unbox(model.init(...)["params"])``; report is a ConversionReport.

    Raises:
      ValueError: a tensor's shape differs from the one ``cfg`` implies; a name appears both with
        and without "bert."; tied copies disagree; parameters are missing and no init_params.
    """
    rows = _checked_table(cfg)
    report = ConversionReport()
    by_canonical: dict[str, str] = {}
    for name in tensors:
        canon = _canonical_name(name)
        if canon in by_canonical:
            raise ValueError(f"checkpoint has both {by_canonical[canon]!r} and {name!r} for "
                             f"{canon!r}; pass one model's state dict")
        by_canonical[canon] = name

    dtype = cfg.weight_dtype
    flat: dict[Path, np.ndarray] = {}
    source: dict[Path, str] = {}
    mapped_names = set()
    for row in rows:
        mapped_names.add(row.hf_name)
        original = by_canonical.get(row.hf_name)
        if original is None:
            continue
        x = _to_numpy(tensors[original])
        if tuple(x.shape) != row.transform.hf_shape:
            raise ValueError(
                f"checkpoint tensor {original!r} has shape {tuple(x.shape)}, expected "
                f"{row.transform.hf_shape} for bertjax {'/'.join(row.path)} with this config "
                "(check vocab_size / hidden_size / num_heads against the checkpoint's config.json)")
        value = row.transform.to_bertjax(x)
        if row.path in flat:
            # A tied copy: bertjax has one parameter, so an untied checkpoint cannot be imported.
            if not np.array_equal(flat[row.path], value.astype(dtype)):
                raise ValueError(
                    f"checkpoint tensors {source[row.path]!r} and {original!r} should be tied "
                    f"(bertjax shares {'/'.join(row.path)}) but differ; max abs diff "
                    f"{np.max(np.abs(flat[row.path] - value.astype(dtype)))}")
        else:
            flat[row.path] = value.astype(dtype)
            source[row.path] = original
        report.used.append(original)

    for canon, original in by_canonical.items():
        if canon in mapped_names:
            continue
        (report.buffers if canon in _HF_BUFFERS else report.unused).append(original)

    missing = sorted({r.path for r in rows} - set(flat))
    if missing:
        report.missing = ["/".join(p) for p in missing]
        if init_params is None:
            raise ValueError(
                f"checkpoint has no source for bertjax params {report.missing}; pass init_params "
                "(e.g. model.init(...)['params']) to keep those from a fresh initialization")
        if callable(init_params):
            init_params = init_params(missing)
        init_flat = traverse_util.flatten_dict(nn.meta.unbox(init_params))
        for path in missing:
            if path not in init_flat:
                raise ValueError(f"init_params lacks {'/'.join(path)}; pass the params of a "
                                 "bertjax BertForPreTraining built from the same config")
            value = np.asarray(init_flat[path])
            want = next(r.transform.bertjax_shape for r in rows if r.path == path)
            if tuple(value.shape) != want:
                raise ValueError(f"init_params {'/'.join(path)} has shape {tuple(value.shape)}, "
                                 f"expected {want}; build it from the same config")
            flat[path] = value.astype(dtype)
        logging.warning("HF checkpoint lacks %d bertjax params, kept from init: %s",
                        len(missing), report.missing)
    if report.unused:
        logging.warning("HF checkpoint tensors not used by bertjax: %s", report.unused)
    return traverse_util.unflatten_dict(flat), report


def params_to_hf(params: Any, cfg: model_lib.BertConfig,
                 dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Exports bertjax BertForPreTraining parameters as an HF BertForPreTraining state dict.

    Args:
      params: the bertjax params tree (boxed or not; jax or numpy arrays).
      cfg: the config the params were built with.
      dtype: numpy dtype of the exported tensors (float32 loads into any torch model).

    Returns:
      {HF name: numpy array}, including the tied copies cls.predictions.decoder.weight (= word
      embeddings) and cls.predictions.decoder.bias (= cls.predictions.bias), so that
      ``BertForPreTraining.load_state_dict(..., strict=True)`` accepts it.

    Raises:
      ValueError: a parameter is missing, unexpected, or has the wrong shape for ``cfg``.
    """
    return _rows_to_hf(_checked_table(cfg), traverse_util.flatten_dict(nn.meta.unbox(params)),
                       dtype, "BertForPreTraining")


def encoder_to_hf(bert: Any, cfg: model_lib.BertConfig,
                  dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Exports a bertjax encoder (the ``bert`` entry of any bertjax model's parameters) as an HF
    ``BertModel`` state dict: the table's ``bert.*`` rows, named without the prefix as
    ``BertModel.save_pretrained`` names them.

    Args:
      bert: the encoder's params tree (embeddings, layer_0..., pooler), per layer.
      cfg: the config they were built with.
      dtype: numpy dtype of the exported tensors.

    Raises:
      ValueError: a parameter is missing, unexpected, or has the wrong shape for ``cfg``.
    """
    rows = [r._replace(hf_name=r.hf_name[len("bert."):], path=r.path[1:])
            for r in _checked_table(cfg) if r.hf_name.startswith("bert.")]
    return _rows_to_hf(rows, traverse_util.flatten_dict(nn.meta.unbox(bert)), dtype,
                       "BertModel (the encoder)")


# A fine-tuned bertjax model (bertjax/finetuning: SequenceClassifier, TokenTagger, SpanQA) is
# its encoder, named "bert" as in BertForPreTraining, and one dense head; each transformers task
# class below holds the same two parts. Per class: the head's name (the same in both: bertjax's
# Dense and torch's Linear), and whether the class's encoder has BERT's pooler. bertjax's
# encoder always has one; the classes without it run no pooler, and neither does the bertjax
# model they stand for (a tagger, a span head, a mean-pooling classifier), so it is not exported.
MEAN_POOLING_CLASS = "BertMeanPoolingForSequenceClassification"  # interop/hf_modeling.py
TASK_CLASSES: dict[str, tuple[str, bool]] = {
    "BertForSequenceClassification": ("classifier", True),  # tanh pooler on [CLS]
    MEAN_POOLING_CLASS: ("classifier", False),  # mean of the real tokens' last hidden states
    "BertForTokenClassification": ("classifier", False),
    "BertForQuestionAnswering": ("qa_outputs", False),  # num_outputs 2: start, end
}
_POOLER = ("bert", "pooler")


def task_mapping(cfg: model_lib.BertConfig, architecture: str,
                 num_outputs: int) -> Iterator[Row]:
    """Yields the table of an HF task model <-> a fine-tuned bertjax model: the encoder's rows
    of ``param_mapping`` (without the pooler where the class has none), then the head's.

    Args:
      cfg: the encoder's config (per layer).
      architecture: a key of ``TASK_CLASSES``.
      num_outputs: the head's width (labels; 1 for regression; 2 for span QA).

    Raises:
      ValueError: an unknown architecture.
    """
    if architecture not in TASK_CLASSES:
        raise ValueError(f"architecture={architecture!r}; expected one of {sorted(TASK_CLASSES)}")
    head, pooler = TASK_CLASSES[architecture]
    for row in param_mapping(cfg):
        if row.hf_name.startswith("bert.") and (pooler or row.path[:2] != _POOLER):
            yield row
    yield from _linear(head, (head,), cfg.hidden_size, num_outputs)


def _task_rows(cfg: model_lib.BertConfig, architecture: str, num_outputs: int) -> list[Row]:
    """``task_mapping``, its encoder rows checked against model.py like ``_checked_table``."""
    _checked_table(cfg)
    return list(task_mapping(cfg, architecture, num_outputs))


def task_to_hf(params: Any, cfg: model_lib.BertConfig, architecture: str,
               dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Exports a fine-tuned bertjax model's parameters as the state dict of an HF task class.

    Args:
      params: {"bert": encoder (per layer), head name: {"kernel", "bias"}} (boxed or not).
      cfg: the encoder's config.
      architecture: a key of ``TASK_CLASSES``; the head's width is read from its kernel.
      dtype: numpy dtype of the exported tensors.

    Returns:
      {HF name: numpy array} that ``<architecture>.load_state_dict(..., strict=True)`` takes.

    Raises:
      ValueError: a parameter is missing, unexpected, or has the wrong shape for ``cfg``.
    """
    flat = traverse_util.flatten_dict(nn.meta.unbox(params))
    head, pooler = TASK_CLASSES.get(architecture, (None, None))
    if head is None or (head, "kernel") not in flat:
        raise ValueError(f"params has no {head or '?'}/kernel for {architecture!r}; expected a "
                         f"fine-tuned model with one of the heads of {sorted(TASK_CLASSES)}")
    if not pooler:  # the model this class stands for runs no pooler (TASK_CLASSES)
        flat = {p: x for p, x in flat.items() if p[:2] != _POOLER}
    num_outputs = int(np.shape(flat[(head, "kernel")])[-1])
    return _rows_to_hf(_task_rows(cfg, architecture, num_outputs), flat, dtype,
                       f"fine-tuned model for {architecture}")


def task_from_hf(tensors: Mapping[str, Any], cfg: model_lib.BertConfig,
                 architecture: str) -> tuple[dict[str, Any], list[str]]:
    """Imports an HF task model's state dict as a fine-tuned bertjax model's parameters (the
    inverse of ``task_to_hf``).

    Args:
      tensors: the state dict (numpy or torch); "LayerNorm.gamma/beta" spellings accepted.
      cfg: the encoder's config (see ``hf_config_to_bert``).
      architecture: a key of ``TASK_CLASSES``; the head's width is read from its weight.

    Returns:
      (params, unused): params in ``cfg.param_dtype`` with the layout of the family's model,
      without bert/pooler when the class has none (take it from the model's init); unused: the
      HF names that map to nothing.

    Raises:
      ValueError: a tensor is missing or has the wrong shape.
    """
    by_name = {_canonical_name(k): k for k in tensors}
    head = TASK_CLASSES.get(architecture, (None,))[0]
    if head is None or f"{head}.weight" not in by_name:
        raise ValueError(f"no {head or '?'}.weight for {architecture!r}; expected the state dict "
                         f"of one of {sorted(TASK_CLASSES)}")
    num_outputs = int(np.shape(_to_numpy(tensors[by_name[f"{head}.weight"]]))[0])
    rows = _task_rows(cfg, architecture, num_outputs)
    dtype = jnp.dtype(cfg.param_dtype)
    flat = {}
    for row in rows:
        if row.hf_name not in by_name:
            raise ValueError(f"the {architecture} state dict lacks {row.hf_name} (for bertjax "
                             f"{'/'.join(row.path)})")
        x = _to_numpy(tensors[by_name[row.hf_name]])
        if tuple(x.shape) != row.transform.hf_shape:
            raise ValueError(f"tensor {by_name[row.hf_name]!r} has shape {tuple(x.shape)}, "
                             f"expected {row.transform.hf_shape} with this config")
        if row.path not in flat:  # a tied copy (the MLM decoder) is not in a task table
            flat[row.path] = row.transform.to_bertjax(x).astype(dtype)
    used = {r.hf_name for r in rows}
    unused = sorted(by_name[c] for c in by_name if c not in used and c not in _HF_BUFFERS)
    return traverse_util.unflatten_dict(flat), unused


def _rows_to_hf(rows: list[Row], flat: dict[Path, Any], dtype: Any,
                what: str) -> dict[str, np.ndarray]:
    """{HF name: tensor} for every row, from flat bertjax params that must match them."""
    extra = set(flat) - {r.path for r in rows}
    if extra:
        raise ValueError(f"params has entries with no HF name {sorted('/'.join(p) for p in extra)}"
                         f"; export only a bertjax {what} params tree")
    out = {}
    for row in rows:
        if row.path not in flat:
            raise ValueError(f"params lacks {'/'.join(row.path)} (needed for {row.hf_name})")
        x = np.asarray(flat[row.path])
        if tuple(x.shape) != row.transform.bertjax_shape:
            raise ValueError(f"param {'/'.join(row.path)} has shape {tuple(x.shape)}, expected "
                             f"{row.transform.bertjax_shape} for this config")
        out[row.hf_name] = row.transform.to_hf(x).astype(dtype)
    return out


def load_hf_checkpoint(directory: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Reads an HF checkpoint directory: safetensors (single file or sharded), else
    pytorch_model.bin through ``torch.load(weights_only=True)`` when torch is installed.

    Args:
      directory: holds config.json and model.safetensors, model.safetensors.index.json or
        pytorch_model.bin.

    Returns:
      (hf_config dict, {tensor name: numpy array}).

    Raises:
      FileNotFoundError: config.json or the weights are missing (one line naming them).
      ValueError: a weights file cannot be read (truncated, or another format), naming it.
    """
    from safetensors.numpy import load_file  # local: only conversion needs safetensors

    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{directory} has no config.json; an HF BERT checkpoint "
                                "directory holds config.json and model.safetensors")
    with open(config_path) as f:
        hf_config = json.load(f)
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    torch_bin = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(single):
        files = [single]
    elif os.path.exists(index):
        try:
            with open(index) as f:
                shards = set(json.load(f)["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            why = "no weight_map" if isinstance(e, KeyError) else _first_line(e)
            raise ValueError(f"{index} is not a safetensors index, JSON with a weight_map ({why});"
                             " copy or save the checkpoint again") from None
        files = sorted(os.path.join(directory, name) for name in shards)
    elif os.path.exists(torch_bin):
        try:
            import torch
        except ImportError:
            raise FileNotFoundError(
                f"{directory} has only pytorch_model.bin and torch is not installed; install "
                "torch or re-save the model with safe_serialization=True") from None
        try:
            state = torch.load(torch_bin, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, or not a state dict torch may load safely
            why = ("torch's weights-only loader refused it" if "eights only" in str(e) else
                   _first_line(e))
            raise ValueError(f"{torch_bin} cannot be loaded by torch ({why}); it is "
                             "truncated or not a weights-only state dict: copy it again or "
                             "re-save the model with safe_serialization=True") from None
        if not isinstance(state, dict):
            raise ValueError(f"{torch_bin} holds a {type(state).__name__}, not a state dict; "
                             "re-save the model with save_pretrained(...)")
        return hf_config, {k: _to_numpy(v) for k, v in state.items()}
    else:
        raise FileNotFoundError(
            f"{directory} has neither model.safetensors, model.safetensors.index.json nor "
            "pytorch_model.bin; re-save the model with save_pretrained(...)")
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist but {index} lists it; copy the "
                                    "whole checkpoint directory")
        try:
            tensors.update(load_file(path))
        except Exception as e:  # safetensors' own error type: a truncated or foreign file
            raise ValueError(f"{path} cannot be read as safetensors ({_first_line(e)}); it is "
                             "truncated or not a safetensors file: copy or save it again"
                             ) from None
    return hf_config, tensors


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def save_hf_checkpoint(directory: str, params: Any, cfg: model_lib.BertConfig) -> None:
    """Writes config.json and model.safetensors that transformers' from_pretrained can load.

    Args:
      directory: output directory (created if needed).
      params: bertjax BertForPreTraining params.
      cfg: the config the params were built with.
    """
    save_hf_directory(directory, params_to_hf(params, cfg), bert_to_hf_config(cfg))


def save_hf_directory(directory: str, tensors: dict[str, np.ndarray],
                      hf_config: dict[str, Any]) -> None:
    """Writes ``hf_config`` as config.json and ``tensors`` as model.safetensors (any of
    transformers' BERT classes, as ``hf_config["architectures"]`` says).

    Args:
      directory: output directory (created if needed).
      tensors: {HF name: numpy array}, from ``params_to_hf`` or ``encoder_to_hf``.
      hf_config: from ``bert_to_hf_config``.
    """
    from safetensors.numpy import save_file  # local: only conversion needs safetensors

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})

