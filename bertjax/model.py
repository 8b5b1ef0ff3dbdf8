"""BERT in Flax linen: embeddings, post-LN encoder, pooler, tied sparse MLM head, NSP head.

The architecture follows Devlin et al. (2018) and the google-research/bert reference: every
parameter is created with logical axis names (see bertjax/sharding.py for the mapping to mesh
axes) and the main activations are constrained by logical names too, so the same module runs
unsharded on one device or split over a (data, fsdp, tensor) mesh.

Weight axis names:      vocab, embed, mlp, heads, kv, pos, type, norm, classes.
Activation axis names:  act_batch, act_len, act_embed, act_heads, act_kv, act_mlp.

Tensor shape letters in comments: B batch, L sequence length, D hidden (embed), H heads,
K head size (kv), F intermediate (mlp), P masked positions per sequence, V vocabulary.

This module never imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bertjax import sharding

Array = jax.Array

# name -> (layers, hidden, heads); intermediate size is always 4 x hidden.
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
_ATTENTION_IMPLS = ("auto", "explicit", "xla", "cudnn")
# What a rematerialised layer keeps for the backward pass: nothing ("full": everything is
# recomputed), or the matmul outputs ("dots": only the cheap elementwise work is recomputed).
_REMAT = {"none": None, "full": "nothing_saveable", "dots": "dots_with_no_batch_dims_saveable"}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Sizes and numerics of one BERT model (separate from the run config).

    Attributes:
      hidden_act: "gelu" is the exact erf GELU of the original checkpoints; "gelu_tanh" the
        tanh approximation some ports use. Imported checkpoints state which one they need.
      attention_impl: "explicit" computes softmax(QK^T)V with einsums (needed for attention
        dropout); "xla"/"cudnn" use jax.nn.dot_product_attention; "auto" picks "explicit"
        when attention dropout is active and "xla" otherwise.
      scan_layers: run the encoder stack as one ``nn.scan`` over layers whose parameters are
        stacked on a leading "layers" axis (``stack_layers``/``unstack_layers`` convert): XLA
        compiles one layer instead of num_layers copies. Off by default: imports and exports
        name layers one by one (``layer_0`` ...); checkpoints of either layout are read by
        models of either (bertjax/params_io.py).
      remat: "none", "full" or "dots": rematerialise each encoder layer in the backward pass
        (see ``_REMAT``), trading recomputation for activation memory (bigger batches).
      prune_last_layer: in pre-training, compute the last encoder layer only at the rows that
        are read (masked positions and [CLS]s; keys and values on every row): the same numbers
        for less work (``BertForPreTraining``). No effect with ``scan_layers``.
      tie_word_embeddings: the MLM decoder is the word-embedding table (BERT's tied head). False
        gives the decoder its own [vocab, hidden] matrix (``mlm_decoder``): the input embeddings
        then move only where their tokens are read, not with every softmax (see
        bench/results/downstream-2026-12-02). Exports write it as its own tensor.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "auto"
    scan_layers: bool = False
    remat: str = "none"
    prune_last_layer: bool = True
    tie_word_embeddings: bool = True

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads="
                f"{self.num_heads}; choose sizes where hidden_size % num_heads == 0")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"model.hidden_act={self.hidden_act!r}; expected one of {_ACTIVATIONS}")
        if self.attention_impl not in _ATTENTION_IMPLS:
            raise ValueError(
                f"model.attention_impl={self.attention_impl!r}; expected one of {_ATTENTION_IMPLS}")
        if self.remat not in _REMAT:
            raise ValueError(f"model.remat={self.remat!r}; expected one of {tuple(_REMAT)}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"model.{name}={getattr(self, name)!r}; expected one of "
                                 f"{tuple(_DTYPES)}")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name}={getattr(self, name)}; expected 0 <= value < 1")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return _DTYPES[self.param_dtype]

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "BertConfig":
        """Returns the named preset (tiny, mini, small, medium, base, large) with overrides."""
        if name not in PRESETS:
            raise ValueError(f"model.preset={name!r} is unknown; expected one of {tuple(PRESETS)}")
        layers, hidden, heads = PRESETS[name]
        sizes = dict(num_layers=layers, hidden_size=hidden, num_heads=heads,
                     intermediate_size=4 * hidden)
        sizes.update(overrides)
        return cls(**sizes)


def _init(cfg: BertConfig, names: tuple[str | None, ...]):
    return nn.with_logical_partitioning(
        nn.initializers.truncated_normal(stddev=cfg.initializer_range), names)


def _zeros(names):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _layer_norm(cfg: BertConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=_zeros(("norm",)), name=name)


def _dense(cfg: BertConfig, features, kernel_names, bias_names, name, axis=-1):
    return nn.DenseGeneral(
        features=features, axis=axis, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
        kernel_init=_init(cfg, kernel_names), bias_init=_zeros(bias_names), name=name)


def _activation(cfg: BertConfig, x: Array) -> Array:
    if cfg.hidden_act == "relu":
        return nn.relu(x)
    return nn.gelu(x, approximate=cfg.hidden_act == "gelu_tanh")


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    cfg: BertConfig

    def setup(self):
        cfg = self.cfg
        self.word_embeddings = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype, embedding_init=_init(cfg, ("vocab", "embed")))
        self.position_embeddings = nn.Embed(
            cfg.max_position_embeddings, cfg.hidden_size, dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype, embedding_init=_init(cfg, ("pos", "embed")))
        self.token_type_embeddings = nn.Embed(
            cfg.type_vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype, embedding_init=_init(cfg, ("type", "embed")))
        self.layer_norm = _layer_norm(cfg, "layer_norm")
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def __call__(self, input_ids, segment_ids, position_ids, deterministic: bool) -> Array:
        # Gather whole rows: the table's embed axis is all-gathered first (it may be split over
        # fsdp) so the lookup needs no resharding of its [B, L, D] result.
        table = sharding.constrain(self.word_embeddings.embedding, ("vocab", None))  # [V, D]
        words = jnp.take(table, input_ids, axis=0).astype(self.cfg.compute_dtype)  # [B, L, D]
        words = sharding.constrain(words, ("act_batch", "act_len", "act_embed"))
        if position_ids is None:  # positions 0..L-1: a slice, whose gradient is a plain sum
            pos = self.position_embeddings.embedding[: input_ids.shape[1]][None]  # [1, L, D]
            pos = pos.astype(self.cfg.compute_dtype)
        else:  # packed sequences restart their positions
            pos = self.position_embeddings(position_ids)
        # Token types: a select over the few rows instead of a gather, whose backward would be
        # B*L scattered adds into 2 rows; this one's is a masked sum.
        table = self.token_type_embeddings.embedding.astype(self.cfg.compute_dtype)  # [T, D]
        types = sum((segment_ids == t)[..., None].astype(self.cfg.compute_dtype) * table[t]
                    for t in range(self.cfg.type_vocab_size))  # [B, L, D]
        x = words + pos + types  # [B, L, D]
        x = self.layer_norm(x)
        x = sharding.constrain(x, ("act_batch", "act_len", "act_embed"))
        return self.dropout(x, deterministic=deterministic)

    def attend(self, x: Array) -> Array:
        """Projects hidden states onto the word embeddings (the tied MLM decoder)."""
        return self.word_embeddings.attend(x)  # [..., V]


def attention_mask(input_mask: Array, pack_ids: Array | None) -> Array:
    """The mask the encoder layers take: who may attend to whom.

    Args:
      input_mask: [B, L] 1 for real tokens, 0 for padding.
      pack_ids: [B, L] packed rows (bertjax/data/packing.py): which sequence of the row each
        token belongs to (1, 2, ...; 0 on padding), or None for one sequence per row.

    Returns:
      input_mask itself ([B, L]: every query sees the row's real keys), or for packed rows a
      bool [B, L, L] block-diagonal mask: query i sees key j when both are in the same sequence.
    """
    if pack_ids is None:
        return input_mask
    same = pack_ids[:, :, None] == pack_ids[:, None, :]  # [B, L, L]
    return same & (pack_ids[:, None, :] > 0)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a key padding mask [B, L] or a pairwise mask [B, Q, L].

    Queries come from ``queries`` [B, Q, D] when given (some rows of ``x``: the pruned last
    layer, see ``EncoderLayer``), else from every row of ``x``; keys and values from ``x``.
    """

    cfg: BertConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool,
                 queries: Array | None = None) -> Array:
        cfg = self.cfg
        heads, kv = cfg.num_heads, cfg.head_dim
        qkv_names = ("act_batch", "act_len", "act_heads", "act_kv")

        def project(name, source):
            y = _dense(cfg, (heads, kv), ("embed", "heads", "kv"), ("heads", "kv"), name)(source)
            return sharding.constrain(y, qkv_names)  # [B, L (or Q), H, K]

        q = project("query", x if queries is None else queries)
        k, v = project("key", x), project("value", x)
        impl = cfg.attention_impl
        dropout_active = cfg.attention_dropout > 0.0 and not deterministic
        if impl == "auto":
            impl = "explicit" if dropout_active else "xla"
        # [B, 1, 1, L] keys for every query, or [B, 1, Q, L] per query (packed rows)
        full_mask = (mask[:, None, None, :] if mask.ndim == 2 else mask[:, None]).astype(bool)
        if impl == "explicit":
            scores = jnp.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(kv)  # [B, H, Q, L]
            scores = jnp.where(full_mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(scores, axis=-1).astype(cfg.compute_dtype)
            probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=deterministic)
            ctx = jnp.einsum("bhqs,bshk->bqhk", probs, v)  # [B, L, H, K]
        else:
            if dropout_active:
                raise ValueError(
                    f"model.attention_impl={impl!r} has no attention dropout; set "
                    "model.attention_dropout=0 or model.attention_impl='explicit'")
            if impl == "cudnn" and mask.ndim == 2:  # lengths, not a mask: rows are right-padded
                lengths = jnp.sum(mask, axis=-1).astype(jnp.int32)  # [B]
                ctx = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths,
                                                   implementation="cudnn")
            else:
                ctx = jax.nn.dot_product_attention(q, k, v, mask=full_mask, implementation=impl)
        ctx = sharding.constrain(ctx, qkv_names)
        out = _dense(cfg, cfg.hidden_size, ("heads", "kv", "embed"), ("embed",), "out",
                     axis=(-2, -1))(ctx)  # [B, L, D]
        return out


class EncoderLayer(nn.Module):
    """One post-LN transformer layer: x = LN(x + Attn(x)); x = LN(x + MLP(x)).

    With ``rows`` [B, Q] the layer is computed only at those positions (keys and values still
    from every row): the output [B, Q, D] equals the full layer's output gathered at ``rows``,
    for a fraction Q/L of the query, attention-output and MLP work. The last layer of a
    pre-training forward needs nothing else (only masked positions and [CLS]s are read).
    """

    cfg: BertConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool,
                 rows: Array | None = None) -> Array:
        cfg = self.cfg
        act_names = ("act_batch", "act_len", "act_embed")
        queries = None
        if rows is not None:
            queries = jnp.take_along_axis(x, rows[..., None], axis=1)  # [B, Q, D]
            if mask.ndim == 3:  # packed rows: each kept query's own row of the pairwise mask
                mask = jnp.take_along_axis(mask, rows[..., None], axis=1)  # [B, Q, L]
        attn = SelfAttention(cfg, name="attention")(x, mask, deterministic, queries)
        attn = nn.Dropout(cfg.hidden_dropout)(attn, deterministic=deterministic)
        x = _layer_norm(cfg, "attention_norm")((x if rows is None else queries) + attn)
        x = sharding.constrain(x, act_names)
        h = _dense(cfg, cfg.intermediate_size, ("embed", "mlp"), ("mlp",), "intermediate")(x)
        h = sharding.constrain(_activation(cfg, h), ("act_batch", "act_len", "act_mlp"))
        h = _dense(cfg, cfg.hidden_size, ("mlp", "embed"), ("embed",), "output")(h)
        h = nn.Dropout(cfg.hidden_dropout)(h, deterministic=deterministic)
        x = _layer_norm(cfg, "output_norm")(x + h)
        return sharding.constrain(x, act_names)  # [B, L, D]


def _layer_class(cfg: BertConfig) -> type:
    """EncoderLayer, wrapped in nn.remat when ``cfg.remat`` asks for it."""
    if cfg.remat == "none":
        return EncoderLayer
    policy = getattr(jax.checkpoint_policies, _REMAT[cfg.remat])
    # Arguments count from self = 0: (x, mask, deterministic, rows) are 1, 2, 3, 4.
    return nn.remat(EncoderLayer, policy=policy, static_argnums=(3,))


class _ScanBody(nn.Module):
    """One scanned step: the layer on the carried hidden states (nn.scan's (carry, out) form)."""

    cfg: BertConfig
    deterministic: bool

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> tuple[Array, None]:
        return _layer_class(self.cfg)(self.cfg, name="layer")(x, mask, self.deterministic), None


class ScannedEncoder(nn.Module):
    """The encoder stack as one nn.scan; parameters [num_layers, ...] on the "layers" axis."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool) -> Array:
        stack = nn.scan(_ScanBody, variable_axes={"params": 0},
                        split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,),
                        length=self.cfg.num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = stack(self.cfg, deterministic, name="stack")(x, mask)
        return x


def stack_layers(bert_params: dict, num_layers: int) -> dict:
    """BertModel parameters with ``layer_0..layer_{n-1}`` -> the scan layout (``layers``)."""
    out = {k: v for k, v in bert_params.items() if not k.startswith("layer_")}
    per_layer = [bert_params[f"layer_{i}"] for i in range(num_layers)]
    out["layers"] = {"stack": {"layer": jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)}}
    return out


def unstack_layers(bert_params: dict) -> dict:
    """The inverse of ``stack_layers``: scan layout -> ``layer_i`` entries."""
    out = {k: v for k, v in bert_params.items() if k != "layers"}
    stacked = bert_params["layers"]["stack"]["layer"]
    n = jax.tree.leaves(stacked)[0].shape[0]
    for i in range(n):
        out[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return out


class BertModel(nn.Module):
    """Embeddings, encoder stack and pooler; returns (sequence_output, pooled_output)."""

    cfg: BertConfig

    def setup(self):
        cfg = self.cfg
        self.embeddings = Embeddings(cfg)
        if cfg.scan_layers:
            self.layers = ScannedEncoder(cfg)
        else:
            layer = _layer_class(cfg)
            self.layers = [layer(cfg, name=f"layer_{i}") for i in range(cfg.num_layers)]
        self.pooler = _dense(cfg, cfg.hidden_size, ("embed", "embed_out"), ("embed_out",),
                             "pooler")

    def __call__(self, input_ids: Array, input_mask: Array, segment_ids: Array | None = None,
                 position_ids: Array | None = None, deterministic: bool = True,
                 pack_ids: Array | None = None) -> tuple[Array, Array]:
        """Encodes a batch.

        Args:
          input_ids: [B, L] token ids.
          input_mask: [B, L] 1 for real tokens, 0 for padding.
          segment_ids: [B, L] token-type ids (zeros if None).
          position_ids: [B, L] positions (0..L-1 if None; packed sequences restart them).
          deterministic: disables dropout when True.
          pack_ids: [B, L] for packed rows, the sequence each token belongs to (see
            ``attention_mask``); None for one sequence per row.

        Returns:
          sequence_output [B, L, D] and pooled_output [B, D] (tanh dense on the first token).
        """
        x = self.encode(input_ids, input_mask, segment_ids, position_ids, deterministic, pack_ids)
        return x, self.pool(x[:, 0])

    def encode(self, input_ids: Array, input_mask: Array, segment_ids: Array | None = None,
               position_ids: Array | None = None, deterministic: bool = True,
               pack_ids: Array | None = None, rows: Array | None = None) -> Array:
        """The encoder's last hidden states: [B, L, D], or [B, Q, D] at ``rows`` [B, Q].

        With ``rows`` the last layer is computed only at those positions (``EncoderLayer``):
        the same numbers as the full output gathered there, for less work. A scanned stack
        runs every layer whole and gathers (its layers share one compiled body).
        """
        if segment_ids is None:
            segment_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, segment_ids, position_ids, deterministic)
        mask = attention_mask(input_mask, pack_ids)
        if self.cfg.scan_layers:
            x = self.layers(x, mask, deterministic)
            return x if rows is None else jnp.take_along_axis(x, rows[..., None], axis=1)
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            x = layer(x, mask, deterministic, rows if last else None)
        return x

    def pool(self, first: Array) -> Array:
        """The pooler: tanh dense on a sequence's first ([CLS]) hidden state [..., D]."""
        return jnp.tanh(self.pooler(first))

    def attend(self, x: Array) -> Array:
        return self.embeddings.attend(x)


class MlmHead(nn.Module):
    """Transform (dense + activation + LayerNorm) of the hidden states at masked positions."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, h: Array) -> Array:
        cfg = self.cfg
        h = _dense(cfg, cfg.hidden_size, ("embed", "embed_out"), ("embed_out",), "transform")(h)
        h = _activation(cfg, h)
        return _layer_norm(cfg, "transform_norm")(h)


class BertForPreTraining(nn.Module):
    """BERT with the tied MLM head (evaluated only at masked positions) and the NSP head."""

    cfg: BertConfig

    def setup(self):
        cfg = self.cfg
        self.bert = BertModel(cfg)
        self.mlm = MlmHead(cfg)
        self.mlm_bias = self.param("mlm_bias", _zeros(("vocab",)), (cfg.vocab_size,),
                                   cfg.weight_dtype)
        if not cfg.tie_word_embeddings:
            self.mlm_decoder = self.param("mlm_decoder", _init(cfg, ("vocab", "embed")),
                                          (cfg.vocab_size, cfg.hidden_size), cfg.weight_dtype)
        self.nsp = _dense(cfg, 2, ("embed", "classes"), ("classes",), "nsp")

    def __call__(self, input_ids: Array, input_mask: Array, segment_ids: Array,
                 masked_lm_positions: Array, position_ids: Array | None = None,
                 deterministic: bool = True, pack_ids: Array | None = None,
                 next_sentence_positions: Array | None = None,
                 prune_last_layer: bool | None = None) -> tuple[Array, Array]:
        """Returns (mlm_logits [B, P, V] float32, nsp_logits [B, 2] or [B, M, 2] float32).

        Only the P masked positions and the [CLS]s are read, so the last encoder layer is
        computed at those rows alone (``prune_last_layer``, default the model config's; keys
        and values on every row, the same numbers as the whole layer: tested against
        transformers and against ``prune_last_layer=False``), and the vocabulary projection
        runs on the P rows, not on all L (over every position it would be ~20% of BERT-base's
        FLOPs). Packed rows
        (pack_ids and next_sentence_positions [B, M], the [CLS] of each of up to M pairs) get
        one NSP prediction per pair.
        """
        b, p = masked_lm_positions.shape
        cls_positions = (jnp.zeros((b, 1), masked_lm_positions.dtype)
                         if next_sentence_positions is None else next_sentence_positions)
        rows = jnp.concatenate([masked_lm_positions,
                                cls_positions.astype(masked_lm_positions.dtype)], axis=1)
        if prune_last_layer is None:
            prune_last_layer = self.cfg.prune_last_layer
        if prune_last_layer:  # [B, P + M, D]: the masked positions, then the [CLS]s
            out = self.bert.encode(input_ids, input_mask, segment_ids, position_ids,
                                   deterministic, pack_ids, rows=rows)
        else:
            seq = self.bert.encode(input_ids, input_mask, segment_ids, position_ids,
                                   deterministic, pack_ids)  # [B, L, D]
            out = jnp.take_along_axis(seq, rows[..., None], axis=1)
        picked, cls = out[:, :p], out[:, p:]  # [B, P, D], [B, M, D]
        h = self.mlm(picked)
        if self.cfg.tie_word_embeddings:
            logits = self.bert.attend(h)
        else:
            dtype = self.cfg.compute_dtype
            logits = jnp.dot(h.astype(dtype), self.mlm_decoder.astype(dtype).T)
        logits = logits.astype(jnp.float32) + self.mlm_bias.astype(jnp.float32)
        pooled = self.bert.pool(cls if next_sentence_positions is not None else cls[:, 0])
        nsp_logits = self.nsp(pooled).astype(jnp.float32)  # [B, 2] or [B, M, 2]
        return logits, nsp_logits  # [B, P, V], [B, (M,) 2]
