"""What pre-training left in an encoder, next to the same model freshly initialised.

For each workdir (a bertjax pre-training run) this prints, on held-out sentences of the
embedded corpus (the demo's dev sentences, one per row):

  emb norm       mean L2 norm of the word-embedding rows of the tokens seen (and of all rows)
  emb similarity mean cosine similarity of random pairs of word-embedding rows, among frequent
                 pieces and among the rarer half (sentencepiece ids follow frequency); 0 at
                 initialisation. Rare rows drifting together lose what tells them apart.
  pos norm       mean L2 norm of the first 64 position-embedding rows; pos sim: mean cosine
                 similarity of neighbouring position rows (how much order information they hold)
  LN gain        mean |gamma| of every LayerNorm (embedding, each layer's two)
  hidden norm    mean L2 norm of each layer's output at real tokens
  anisotropy     mean cosine similarity between the hidden states of random pairs of tokens
                 from different sentences (1: every token looks the same; ~0 healthy)
  attn entropy   mean entropy (nats) of each layer's attention rows, and that of uniform
                 attention over the same rows (ln of the sentence length)
  [CLS] sim      mean cosine similarity of the last layer's [CLS] states of different
                 sentences (1: the same vector whatever the sentence, nothing to classify from)
  pooler |tanh|  mean |pooled| and the share of pooled units above 0.99 (saturated)

Usage: python scripts/encoder_health.py WORKDIR [WORKDIR ...] [--sentences 256]
The first row of the table is a fresh initialisation of the first workdir's model (seed 0).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def sentences(n: int) -> list[str]:
    from bertjax.data import corpus
    from bertjax.finetuning import demo
    _, held = demo.split_sentences(corpus.stdlib_documents())
    return held[:n]


def stats(params: dict, model, ids: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    bert = params["bert"]
    out = {}
    word = np.asarray(bert["embeddings"]["word_embeddings"]["embedding"])
    seen = np.unique(ids[mask > 0])
    out["emb norm (seen)"] = float(np.linalg.norm(word[seen], axis=-1).mean())
    out["emb norm (all)"] = float(np.linalg.norm(word, axis=-1).mean())
    rng = np.random.default_rng(0)
    for label, lo, hi in (("frequent ids 5-500", 5, 500),
                          (f"rare ids {len(word) // 2}+", len(word) // 2, len(word))):
        a, b = rng.integers(lo, hi, 4000), rng.integers(lo, hi, 4000)
        a, b = a[a != b], b[a != b]
        x, y = word[a], word[b]
        cos = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
        out[f"emb similarity, {label}"] = float(cos.mean())
    pos = np.asarray(bert["embeddings"]["position_embeddings"]["embedding"])[:64]
    out["pos norm"] = float(np.linalg.norm(pos, axis=-1).mean())
    pn = pos / np.linalg.norm(pos, axis=-1, keepdims=True)
    out["pos sim (neighbours)"] = float((pn[1:] * pn[:-1]).sum(-1).mean())
    gains = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(bert):
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys[-1] == "scale":
            gains["/".join(keys[:-1])] = float(np.abs(np.asarray(leaf)).mean())
    for k, v in gains.items():
        out[f"LN gain {k.replace('layer_', 'L').replace('embeddings/', 'emb ')}"] = v

    variables = {"params": bert}
    _, inter = model.apply(variables, jnp.asarray(ids), jnp.asarray(mask),
                           capture_intermediates=True, mutable=["intermediates"])
    inter = inter["intermediates"]
    layers = sorted(k for k in inter if k.startswith("layer_"))
    h_in = np.asarray(inter["embeddings"]["__call__"][0])
    real = np.argwhere(mask > 0)
    for name in layers:
        h = np.asarray(inter[name]["__call__"][0])
        out[f"hidden norm {name}"] = float(np.linalg.norm(h[mask > 0], axis=-1).mean())
        a = real[rng.integers(len(real), size=2000)]
        b = real[rng.integers(len(real), size=2000)]
        keep = a[:, 0] != b[:, 0]
        x, y = h[a[keep, 0], a[keep, 1]], h[b[keep, 0], b[keep, 1]]
        cos = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
        out[f"anisotropy {name}"] = float(cos.mean())
        # attention entropy, recomputed from this layer's input and its query/key weights
        att = bert[name]["attention"]
        q = np.einsum("bld,dhk->blhk", h_in, att["query"]["kernel"]) + att["query"]["bias"]
        k = np.einsum("bld,dhk->blhk", h_in, att["key"]["kernel"]) + att["key"]["bias"]
        s = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
        s = np.where(mask[:, None, None, :] > 0, s, -1e30)
        s = s - s.max(-1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(-1, keepdims=True)
        ent = -(p * np.log(np.maximum(p, 1e-30))).sum(-1)  # [B, H, Q]
        rows = np.broadcast_to(mask[:, None, :], ent.shape) > 0
        out[f"attn entropy {name}"] = float(ent[rows].mean())
        uniform = np.broadcast_to(np.log(mask.sum(-1))[:, None, None], ent.shape)
        out[f"attn entropy uniform {name}"] = float(uniform[rows].mean())
        h_in = h
    cls = h_in[:, 0] / np.linalg.norm(h_in[:, 0], axis=-1, keepdims=True)
    sim = cls @ cls.T
    out["[CLS] similarity across sentences"] = float(
        (sim.sum() - np.trace(sim)) / (len(sim) * (len(sim) - 1)))
    pooled = np.tanh(h_in[:, 0] @ np.asarray(bert["pooler"]["kernel"])
                     + np.asarray(bert["pooler"]["bias"]))
    out["pooler mean |tanh|"] = float(np.abs(pooled).mean())
    out["pooler share > 0.99"] = float((np.abs(pooled) > 0.99).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdirs", nargs="+")
    ap.add_argument("--sentences", type=int, default=256)
    args = ap.parse_args()
    for w in map(os.path.abspath, args.workdirs):  # orbax reads absolute paths
        if not os.path.isdir(w):
            raise SystemExit(f"{w}: not a directory; give bertjax pre-training workdirs")
    import jax
    from flax.core import meta

    from bertjax import config as config_lib
    from bertjax import model as model_lib
    from bertjax import params_io
    from bertjax import rundir
    from bertjax.finetuning import features
    import ml_collections

    results = {}
    model = None
    for w in map(os.path.abspath, args.workdirs):  # orbax reads absolute paths
        saved = rundir.saved_config(w)
        if saved is None:
            raise SystemExit(f"{w}: no saved run config; give a bertjax pre-training workdir")
        cfg = config_lib.model_config(ml_collections.ConfigDict(saved))
        tok = features.load_tokenizer(w)
        ids = np.zeros((args.sentences, 64), np.int32)
        mask = np.zeros_like(ids)
        for i, s in enumerate(sentences(args.sentences)):
            t = [tok.cls_id] + list(tok.encode_batch([s])[0])[:62] + [tok.sep_id]
            ids[i, :len(t)], mask[i, :len(t)] = t, 1
        full = model_lib.BertForPreTraining(cfg)
        abstract = meta.unbox(jax.eval_shape(
            lambda: full.init(jax.random.key(0), ids[:1], mask[:1], np.zeros_like(ids[:1]),
                              np.zeros((1, 1), np.int32))["params"]))
        if model is None:
            fresh = meta.unbox(full.init(jax.random.key(0), ids[:1], mask[:1],
                                         np.zeros_like(ids[:1]),
                                         np.zeros((1, 1), np.int32))["params"])
            model = model_lib.BertModel(cfg)
            results["fresh init"] = stats(fresh, model, ids, mask)
        steps = sorted(int(x) for x in os.listdir(os.path.join(w, "checkpoints")) if x.isdigit())
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        params = params_io.restore(os.path.join(w, "checkpoints", str(steps[-1]), "state"),
                                   abstract, jax.tree.map(lambda _: one, abstract), w)
        results[w] = stats(jax.device_get(params), model_lib.BertModel(cfg), ids, mask)
    names = list(results)
    keys = list(results[names[0]])
    width = max(len(k) for k in keys)
    print(" " * width + "".join(f"  {os.path.basename(n.rstrip('/'))[:14]:>14s}" for n in names))
    for k in keys:
        print(k.ljust(width) + "".join(f"  {results[n].get(k, float('nan')):14.4f}"
                                        for n in names))


if __name__ == "__main__":
    main()
