"""Sentence embeddings from a bertjax encoder: pooling, sharded batched inference, file modes.

The run, in phases (``run``):

  1. check   the input file(s), the output (its directory exists; an existing file only with
             ``overwrite``), the encoder's workdir (a pre-training or fine-tuning run, or a
             ``bertjax.convert`` import), its tokenizer, its sizes and the mesh; every bad input
             is one line (ConfigError / DataError) before compiling;
  2. build   ``SentenceEncoder`` (BertModel named ``bert`` + pooling): its parameter shapes
             and logical shardings (the rules of pre-training), the workdir's ``bert``
             parameters restored straight into those shards (bertjax/finetuning/encoder.py; a
             checkpoint that cannot be read is one line), one jitted step with the output
             replicated;
  3. embed   global batches of ``batch_size`` sentences; the last one is padded with copies of
             its first row whose ``example_mask`` is 0 and whose outputs are dropped, so every
             sentence is embedded exactly once whatever the device and host counts;
  4. write   float32 [N, D] .npy, or the pairs' cosine similarities (.tsv) and, when the pairs
             carry gold scores, Pearson and Spearman (bertjax.finetuning.metrics); host 0 writes,
             through a temporary file and a rename.

Pooling is over the last layer's hidden states: ``mean`` over real tokens (the padding mask
excludes the rest; what sentence-transformers models such as all-MiniLM-L6-v2 were trained
with) or ``cls``, the [CLS] hidden state. BERT's pooler (a tanh dense on [CLS]) is not used: it
was trained only for next-sentence prediction, and fine-tuning retrains it for its task.

TensorFlow is not imported here.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from bertjax import config as config_lib
from bertjax import model as model_lib
from bertjax import multihost
from bertjax import progress
from bertjax import rundir
from bertjax import sharding
from bertjax import train
from bertjax.data import fs
from bertjax.data.errors import DataError
from bertjax.finetuning import encoder
from bertjax.finetuning import features
from bertjax.finetuning import metrics as metrics_lib
from bertjax.finetuning import packing
from bertjax.finetuning import splits

POOLINGS = ("mean", "cls")
CHUNK_BATCHES = 16  # packed embedding: sentences featurised and packed this many batches at once


def pool(seq: jax.Array, input_mask: jax.Array, pooling: str, normalize: bool) -> jax.Array:
    """One vector per sequence from the last hidden states.

    Args:
      seq: [B, L, D] hidden states.
      input_mask: [B, L] 1 for real tokens (including [CLS] and [SEP]), 0 for padding.
      pooling: "mean" (over real tokens) or "cls" (the first position).
      normalize: divide by the L2 norm (cosine similarity becomes a dot product).

    Returns:
      float32 [B, D].
    """
    seq = seq.astype(jnp.float32)
    if pooling == "mean":
        m = input_mask.astype(jnp.float32)[..., None]  # [B, L, 1]
        emb = jnp.sum(seq * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)  # [B, D]
    elif pooling == "cls":
        emb = seq[:, 0]  # [B, D]
    else:
        raise ValueError(f"pooling={pooling!r}; expected one of {POOLINGS}")
    return _normalized(emb) if normalize else emb


def _normalized(emb: jax.Array) -> jax.Array:
    return emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)


def pool_packed(seq: jax.Array, pack_ids: jax.Array, cls_positions: jax.Array, pooling: str,
                normalize: bool) -> jax.Array:
    """``pool`` for packed rows (bertjax/finetuning/packing.py): one vector per example slot.

    Args:
      seq: [B, L, D] hidden states; pack_ids: [B, L] the slot of each token (1..M, 0 padding);
      cls_positions: [B, M] where each slot's [CLS] is.

    Returns:
      float32 [B, M, D] (zeros, or any value, for empty slots: they are not read back).
    """
    seq = seq.astype(jnp.float32)
    if pooling == "mean":
        slots = jnp.arange(1, cls_positions.shape[1] + 1)
        member = (pack_ids[..., None] == slots).astype(jnp.float32)  # [B, L, M]
        total = jnp.einsum("bld,blm->bmd", seq, member)
        emb = total / jnp.maximum(jnp.sum(member, axis=1)[..., None], 1e-9)  # [B, M, D]
    elif pooling == "cls":
        emb = jnp.take_along_axis(seq, cls_positions[..., None], axis=1)  # [B, M, D]
    else:
        raise ValueError(f"pooling={pooling!r}; expected one of {POOLINGS}")
    return _normalized(emb) if normalize else emb


class SentenceEncoder(nn.Module):
    """BertModel (named ``bert``, as in every bertjax checkpoint) followed by ``pool``."""

    cfg: model_lib.BertConfig
    pooling: str = "mean"
    normalize: bool = False

    @nn.compact
    def __call__(self, input_ids: jax.Array, input_mask: jax.Array, segment_ids: jax.Array,
                 position_ids: jax.Array | None = None, pack_ids: jax.Array | None = None,
                 cls_positions: jax.Array | None = None) -> jax.Array:
        """Returns float32 [B, D] sentence embeddings; [B, M, D] for packed rows."""
        seq, _ = model_lib.BertModel(self.cfg, name="bert")(
            input_ids, input_mask, segment_ids, position_ids, True, pack_ids)  # [B, L, D]
        if pack_ids is not None:
            emb = pool_packed(seq, pack_ids, cls_positions, self.pooling, self.normalize)
            return sharding.constrain(emb, ("act_batch", None, "act_embed"))  # [B, M, D]
        emb = pool(seq, input_mask, self.pooling, self.normalize)
        return sharding.constrain(emb, ("act_batch", "act_embed"))  # [B, D]


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the command line decides (see bertjax/embed.py for each flag's meaning)."""

    init_from: str
    pooling: str = "mean"
    normalize: bool = False
    max_seq_length: int = 128
    batch_size: int = 64
    tokenizer: str = ""  # "": the workdir's own
    dtype: str = "float32"
    examples_per_row: int = 1  # > 1: up to this many sentences share a row (packing.py)


@dataclasses.dataclass
class Plan:
    """A checked encoder: nothing compiled or restored yet."""

    settings: Settings
    model_cfg: model_lib.BertConfig
    tok: features.TaskTokenizer
    mesh: Mesh
    rules: tuple


def check(settings: Settings) -> Plan:
    """Validates the encoder workdir, tokenizer, sizes, batch and mesh (one-line errors).

    Raises:
      ConfigError, DataError: naming the value, what was expected and how to fix it.
    """
    s = settings
    if s.pooling not in POOLINGS:
        raise config_lib.ConfigError(f"--pooling={s.pooling!r}; expected one of {POOLINGS}")
    if s.max_seq_length < 3:
        raise config_lib.ConfigError(f"--max_seq_length={s.max_seq_length}; expected at least 3 "
                                     "([CLS], a token and [SEP]), e.g. 128")
    if s.batch_size < 1:
        raise config_lib.ConfigError(f"--batch_size={s.batch_size}; expected a positive number "
                                     "of sentences per batch, e.g. 64")
    if not 1 <= s.examples_per_row <= s.max_seq_length // 3:
        raise config_lib.ConfigError(
            f"--examples_per_row={s.examples_per_row}; expected 1 (one sentence per row) up to "
            f"{s.max_seq_length // 3} (rows of {s.max_seq_length} tokens, at least 3 a sentence)")
    run = rundir.resolve(s.init_from, "--init_from")  # any run kind, or one step of a run
    try:
        return _check_encoder(s, run.saved)
    except (config_lib.ConfigError, DataError) as e:  # name this command's flags
        text = str(e)
        for key, flag in (("--config.tokenizer", "--tokenizer"),
                          ("config.init_from", "--init_from"),
                          ("config.global_batch_size", "--batch_size"),
                          ("config.eval_batch_size", "--batch_size"),
                          ("config.max_seq_length", "--max_seq_length")):
            text = text.replace(key, flag)
        text = re.sub(r" × config\.accum_steps \(1\) = \d+", "", text)  # no such flag here
        raise type(e)(text) from None


def _check_encoder(s: Settings, saved: dict) -> Plan:
    """The encoder's sizes, tokenizer and mesh, checked with the fine-tuning helpers."""
    config = config_lib.base_config()
    config.init_from = s.init_from
    config.max_seq_length = s.max_seq_length
    config.global_batch_size = config.eval_batch_size = s.batch_size
    config.model.dtype = s.dtype
    config.model.hidden_dropout = config.model.attention_dropout = 0.0
    model_cfg = encoder.model_config_for(config)
    # A fine-tuning run records the tokenizer it used (and its casing) in its saved config.
    override = s.tokenizer or saved.get("tokenizer", "")
    casing = {"true": True, "false": False}.get(str(saved.get("do_lower_case", "")).lower())
    tok = features.load_tokenizer(s.init_from, override, casing)
    if tok.vocab_size > model_cfg.vocab_size:
        raise config_lib.ConfigError(f"tokenizer {tok.source} has {tok.vocab_size} tokens but "
                                     f"the model only {model_cfg.vocab_size}; use the "
                                     "checkpoint's own tokenizer (leave --tokenizer empty)")
    mesh = encoder.check_mesh(config, model_cfg)
    return Plan(s, model_cfg, tok, mesh, tuple(tuple(r) for r in config.sharding.rules))


def embed_step(params: Any, batch: dict, fns: train.StepFns) -> jax.Array:
    """[B, D] pooled vectors of one batch (pure; jitted by train.jit_eval_step)."""
    return fns.model.apply({"params": params}, batch["input_ids"], batch["input_mask"],
                           batch["segment_ids"],
                           *(batch[k] for k in packing.PACKED_KEYS if k in batch))


class Embedder:
    """A restored, sharded, compiled encoder that embeds lists of sentences."""

    def __init__(self, plan: Plan, mesh: Mesh | None = None, params: Any = None):
        """Restores the workdir's encoder onto ``mesh`` (default: the plan's, over every
        device) and jits the embedding step. ``params`` ({"bert": encoder parameters}, e.g.
        those bertjax.load already holds) are placed on the mesh instead of being read from
        the checkpoint a second time."""
        s = plan.settings
        self.plan, self.mesh = plan, mesh or plan.mesh
        model = SentenceEncoder(plan.model_cfg, s.pooling, s.normalize)
        # Shapes and shardings only: the weights are restored straight into their shards, so
        # no random initialisation is computed just to be overwritten (and no optimizer state).
        abstract, params_sh = train.param_shardings(model, train.task_inputs(s.max_seq_length),
                                                    self.mesh, plan.rules)
        from bertjax import checkpoint as ckpt_lib  # orbax

        ckpt_lib.quiet_failed_restore()
        try:
            self.params = None if params is not None else train.restore_params(
                s.init_from, abstract, params_sh, "--init_from", subtree="bert")
        except (config_lib.ConfigError, DataError):
            raise
        except Exception as e:  # the checkpoint's files: missing, truncated, not orbax's
            text = str(e).strip()
            why = f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else \
                type(e).__name__
            raise config_lib.ConfigError(
                f"--init_from={s.init_from}: its encoder cannot be read from "
                f"{rundir.resolve(s.init_from, '--init_from').step_dir} ({why}); the checkpoint "
                "is damaged: use another step (--init_from=WORKDIR/checkpoints/N) or "
                "re-create it") from e
        if params is not None:
            self.params = jax.device_put({"bert": params["bert"]}, params_sh)
        self.dim = plan.model_cfg.hidden_size
        keys = features.FEATURE_KEYS + (packing.PACKED_KEYS if s.examples_per_row > 1 else ())
        like = {k: np.zeros((s.batch_size, 1), np.int32) for k in keys}
        fns = train.StepFns(model=model, mesh=self.mesh, rules=plan.rules,
                            param_shardings=params_sh)
        self.batch_sh = train.batch_shardings(fns, like)
        self._step = train.jit_eval_step(fns, like, embed_step)

    def _batches(self, sentences: Sequence[str]) -> Iterator[tuple[dict, np.ndarray]]:
        """(this host's featurised rows, the global example_mask) per global batch."""
        s = self.plan.settings
        n, b = len(sentences), s.batch_size
        hosts, me = multihost.process_count(), multihost.process_index()
        local = b // hosts
        for start in range(0, max(n, 1), b):
            idx = np.arange(start, start + b)
            mask = idx < n
            idx = np.where(mask, idx, start)  # padding rows: copies of the batch's first row
            mine = idx[me * local:(me + 1) * local]
            rows = features.encode([{"text_a": sentences[i], "text_b": None, "label": None}
                                    for i in mine], self.plan.tok, s.max_seq_length)
            yield {k: rows[k] for k in features.FEATURE_KEYS}, mask

    def packed_batches(self, sentences: Sequence[str]) -> Iterator[tuple[dict, np.ndarray]]:
        """(this host's packed rows, the global index [B, M] of the sentence in each slot, -1
        empty) per global batch. Sentences are featurised and packed (best fit, longest first)
        a chunk of CHUNK_BATCHES batches' worth at a time, by every host alike."""
        s = self.plan.settings
        b, m = s.batch_size, s.examples_per_row
        chunk = CHUNK_BATCHES * b * m
        for start in range(0, len(sentences), chunk):
            part = sentences[start:start + chunk]
            rows = features.encode([{"text_a": t, "text_b": None, "label": None} for t in part],
                                   self.plan.tok, s.max_seq_length)
            arrays = {k: rows[k] for k in features.FEATURE_KEYS}
            placed, _ = packing.best_fit(packing.lengths(arrays), range(len(part)), m,
                                         s.max_seq_length)
            batch, index = packing.pack(arrays, placed, m,
                                        num_rows=-(-len(placed) // b) * b)
            index = np.where(index >= 0, index + start, -1)
            inputs = {k: batch[k] for k in self.batch_sh}
            for r in range(0, len(index), b):
                yield splits.host_rows(inputs, np.arange(r, r + b)), index[r:r + b]

    def embed(self, sentences: Sequence[str], bar: Any = None) -> np.ndarray:
        """float32 [N, D] embeddings of ``sentences``, in order, each computed once; ``bar``
        (bertjax.progress.bar) is advanced by the sentences embedded."""
        bar = progress.Off() if bar is None else bar
        if not sentences:
            return np.zeros((0, self.dim), np.float32)
        if self.plan.settings.examples_per_row > 1:
            out = np.zeros((len(sentences), self.dim), np.float32)

            def take(result, where):  # per-slot embeddings [B, M, D] to their sentences
                emb = np.asarray(jax.device_get(result))
                out[where[where >= 0]] = emb[where >= 0]
                bar.update(int((where >= 0).sum()))

            pending = None
            for rows, index in self.packed_batches(sentences):
                result = self._step(self.params, multihost.global_batch(rows, self.batch_sh))
                if pending is not None:  # batch t is queued; reading t-1 does not stall
                    take(*pending)
                pending = (result, index)
            take(*pending)
            return out
        out, pending = [], None
        for rows, mask in self._batches(sentences):
            result = self._step(self.params, multihost.global_batch(rows, self.batch_sh))
            if pending is not None:  # batch t is queued; reading t-1 does not stall the device
                out.append(np.asarray(jax.device_get(pending[0]))[pending[1]])
                bar.update(len(out[-1]))
            pending = (result, mask)
        out.append(np.asarray(jax.device_get(pending[0]))[pending[1]])
        bar.update(len(out[-1]))
        return np.concatenate(out).astype(np.float32)


# --------------------------------------------------------------------------------- files


def _read_lines(path: str, what: str) -> list[str]:
    if not fs.is_file(path):
        raise DataError(f"{path}: file not found; expected {what}")
    try:  # lines end at "\n" only (a stray "\r" inside a line stays in it), as the
        # lines of open(newline="\n") do
        lines = [line.rstrip("\r") for line in fs.read_bytes(path).decode(
            "utf-8-sig").split("\n")]
        if lines[-1] == "":
            lines.pop()  # the final newline ends the last line; it starts none
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise DataError(f"{path}:{number}: empty line; expected {what} (remove the line)")
    if not lines:
        raise DataError(f"{path}: empty file; expected {what}")
    return lines


def read_sentences(path: str) -> list[str]:
    """One sentence per line; an empty line is an error naming its number."""
    return _read_lines(path, "one sentence per line")


def read_pairs(path: str) -> tuple[list[str], list[str], np.ndarray | None]:
    """Two tab-separated sentences per line, optionally a third column: a gold score.

    Returns:
      (first sentences, second sentences, float64 [N] gold scores or None). Either every line
      has a score or none has.
    """
    what = "two tab-separated sentences per line, optionally a gold score as a third column"
    a, b, gold = [], [], []
    has_gold = None  # decided by line 1
    for number, line in enumerate(_read_lines(path, what), 1):
        fields = line.split("\t")
        if len(fields) not in (2, 3):
            raise DataError(f"{path}:{number}: {len(fields)} tab-separated fields; "
                            f"expected {what}")
        if not fields[0].strip() or not fields[1].strip():
            raise DataError(f"{path}:{number}: an empty sentence; expected {what}")
        if has_gold is None:
            has_gold = len(fields) == 3
        if has_gold != (len(fields) == 3):
            raise DataError(f"{path}:{number}: {'a' if len(fields) == 3 else 'no'} gold score, "
                            f"but line 1 has {'one' if has_gold else 'none'}; give every line "
                            "a third column or none")
        a.append(fields[0])
        b.append(fields[1])
        if has_gold:
            try:
                gold.append(float(fields[2]))
            except ValueError:
                raise DataError(f"{path}:{number}: gold score {fields[2]!r} is not a number"
                                ) from None
    return a, b, (np.asarray(gold, np.float64) if gold else None)


def cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] arrays (float64 [N]; 0 for a zero vector)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    return np.sum(x * y, axis=1) / np.maximum(norms, 1e-300)


def pair_metrics(sims: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman of the cosine similarities against the gold scores."""
    return {"pearson": metrics_lib.pearson(sims, gold),
            "spearman": metrics_lib.spearman(sims, gold)}


def _atomic(path: str, write) -> None:
    with fs.atomic_write(path, "wb") as f:
        write(f)


def write_embeddings(path: str, emb: np.ndarray) -> None:
    """float32 [N, D] as .npy, through a temporary file (no half-written output)."""
    _atomic(path, lambda f: np.save(f, emb.astype(np.float32)))


def similarity_lines(sims: np.ndarray, gold: np.ndarray | None) -> list[str]:
    """A header, then index<TAB>cosine(<TAB>gold) per pair."""
    head = "index\tcosine" + ("\tgold" if gold is not None else "")
    return [head] + [f"{i}\t{s:.8f}" + (f"\t{gold[i]:g}" if gold is not None else "")
                     for i, s in enumerate(sims)]


def _check_output(path: str, suffix: str, overwrite: bool) -> None:
    parent = os.path.dirname(fs.absolute(path))
    if not fs.is_remote(path) and not fs.path(parent).is_dir():  # gs:// has no directories
        raise config_lib.ConfigError(f"--output={path}: directory {parent} does not exist; "
                                     "create it first")
    if suffix and not path.endswith(suffix):
        raise config_lib.ConfigError(f"--output={path}; expected a {suffix} file name")
    if fs.path(path).is_dir():
        raise config_lib.ConfigError(f"--output={path} is a directory; give a file name")
    if fs.path(path).exists() and not overwrite:
        raise config_lib.ConfigError(f"--output={path} already exists; pass --overwrite to "
                                     "replace it, or choose a new file name")


def run(settings: Settings, input_path: str = "", pairs_path: str = "",
        output: str = "", overwrite: bool = False) -> dict[str, Any]:
    """Embeds ``input_path`` into ``output`` (.npy), or scores ``pairs_path``.

    Args:
      settings: encoder, pooling and batching choices.
      input_path: one sentence per line; ``output`` (a .npy path) is then required.
      pairs_path: two tab-separated sentences (and an optional gold score) per line;
        ``output`` (optional) receives the similarities as TSV, else they are printed.
      output: where to write.
      overwrite: replace an existing ``output`` (else it is refused before anything runs).

    Returns:
      {"count", "dim"} and, for pairs, "similarities" and (with gold scores) "pearson",
      "spearman".
    """
    # 1. check: inputs and outputs, then the encoder; nothing compiled or written yet
    if bool(input_path) == bool(pairs_path):
        raise config_lib.ConfigError("give exactly one of --input=sentences.txt (with "
                                     "--output=emb.npy) or --pairs=pairs.tsv")
    if input_path:
        if not output:
            raise config_lib.ConfigError("--input needs --output=PATH.npy for the embeddings")
        _check_output(output, ".npy", overwrite)
        sentences, gold = read_sentences(input_path), None
    else:
        if output:
            _check_output(output, "", overwrite)
        first, second, gold = read_pairs(pairs_path)
        sentences = first + second
    plan = check(settings)
    chief = multihost.is_chief()
    say = print if chief else (lambda *a, **k: None)
    count = f"{len(sentences)}" if input_path else f"{len(first)} pairs of"
    say(f"{count} sentences, encoder {settings.init_from} "
        f"({plan.model_cfg.num_layers} layers, {plan.model_cfg.hidden_size} wide), "
        f"{settings.pooling} pooling{', normalized' if settings.normalize else ''}, tokenizer "
        f"{plan.tok.source}", flush=True)
    # 2.-3. build and embed
    embedder = Embedder(plan)
    with progress.bar(len(sentences), "sentence", "embed", chief=chief) as bar:
        emb = embedder.embed(sentences, bar)  # the bar's rate: sentences/s
    result: dict[str, Any] = {"count": len(sentences), "dim": int(emb.shape[1])}
    # 4. write
    if input_path:
        if chief:
            write_embeddings(output, emb)
        say(f"wrote float32 {list(emb.shape)} embeddings to {output}")
        return result
    n = len(first)
    sims = cosine(emb[:n], emb[n:])
    result.update(count=n, similarities=sims)
    lines = similarity_lines(sims, gold)
    if output and chief:
        _atomic(output, lambda f: f.write(("\n".join(lines) + "\n").encode()))
        say(f"wrote {n} cosine similarities to {output}")
    elif not output:
        say("\n".join(lines))
    if gold is not None:
        result.update(pair_metrics(sims, gold))
        say(f"{n} pairs: pearson {result['pearson']:.6f}, spearman {result['spearman']:.6f}")
    return result

