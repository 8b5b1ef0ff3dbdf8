"""Copies a pre-training workdir with parts of its encoder re-initialised or rescaled.

A diagnostic for "the pre-trained encoder fine-tunes worse than scratch": fine-tune each copy
(``scripts/downstream_check.py --init_from=COPY``) and see which part of the encoder carries the
harm. The copy keeps the run's saved config and tokenizer, and only the latest checkpoint, whose
parameters are changed; fine-tuning reads it like any pre-training workdir.

Parts (``--reset``, comma-separated):
  word          the word-embedding table
  rare:N        word-embedding rows N and above (sentencepiece ids: rarer pieces last)
  embeddings    word, position and token-type tables and the embedding LayerNorm
  layers        every encoder layer
  last          the last encoder layer
  all           everything under ``bert`` (a check: this should fine-tune like scratch)
  allbutword    everything under ``bert`` except the word-embedding table

``--scale_word=F`` multiplies the word-embedding table by F; ``--scale_inputs=F`` multiplies
the word, position and token-type tables together (the LayerNorm after their sum makes the
model compute the same function: only the scale fine-tuning starts from changes).
Re-initialised parameters are drawn as the model initialises them (``--seed``).

Usage:
  python scripts/encoder_ablation.py runs/bert_tiny runs/ablate-word --reset=word
  python scripts/encoder_ablation.py runs/bert_tiny runs/ablate-scaled \\
      --reset=allbutword --scale_word=0.27
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PARTS = ("word", "rare", "embeddings", "layers", "last", "all", "allbutword")


def parse_reset(text: str) -> list[tuple[str, int]]:
    """'word,rare:4096' -> [("word", 0), ("rare", 4096)]; one clear line on a bad part."""
    out = []
    for item in filter(None, text.split(",")):
        name, _, arg = item.partition(":")
        if name not in PARTS or (name == "rare") != bool(arg) or (arg and not arg.isdigit()):
            raise SystemExit(f"--reset: {item!r} is not a part; expected some of {PARTS} "
                             "(rare as rare:N with N a word id)")
        out.append((name, int(arg or 0)))
    return out


def ablate(bert: dict, fresh: dict, reset: list[tuple[str, int]], scale_word: float,
           scale_inputs: float) -> dict:
    """The encoder parameters ``bert`` (nested dict of numpy arrays) with the parts changed;
    ``fresh`` is a freshly initialised encoder of the same shapes."""
    import numpy as np

    out = {k: v for k, v in bert.items()}
    out["embeddings"] = dict(bert["embeddings"])
    layers = sorted((k for k in bert if k.startswith("layer")), key=lambda k: int(k.split("_")[-1]))
    word = ("word_embeddings", "embedding")
    for name, n in reset:
        if name == "word":
            out["embeddings"]["word_embeddings"] = fresh["embeddings"]["word_embeddings"]
        elif name == "rare":
            table = np.array(out["embeddings"][word[0]][word[1]])
            table[n:] = fresh["embeddings"][word[0]][word[1]][n:]
            out["embeddings"]["word_embeddings"] = {"embedding": table}
        elif name == "embeddings":
            out["embeddings"] = dict(fresh["embeddings"])
        elif name in ("layers", "last"):
            for k in (layers if name == "layers" else layers[-1:]):
                out[k] = fresh[k]
        else:  # all, allbutword
            keep = out["embeddings"]["word_embeddings"]
            out = {k: v for k, v in fresh.items()}
            out["embeddings"] = dict(fresh["embeddings"])
            if name == "allbutword":
                out["embeddings"]["word_embeddings"] = keep
    tables = ["word_embeddings"] + (["position_embeddings", "token_type_embeddings"]
                                    if scale_inputs != 1.0 else [])
    for t in tables:
        f = scale_word * scale_inputs if t == "word_embeddings" else scale_inputs
        out["embeddings"][t] = {"embedding": np.asarray(out["embeddings"][t]["embedding"]) * f}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="a pre-training workdir")
    ap.add_argument("dst", help="the copy to write (must not exist)")
    ap.add_argument("--reset", default="", help=f"comma-separated parts: {', '.join(PARTS)}")
    ap.add_argument("--scale_word", type=float, default=1.0)
    ap.add_argument("--scale_inputs", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    reset = parse_reset(args.reset)
    src, dst = os.path.abspath(args.src), os.path.abspath(args.dst)
    from bertjax import rundir

    if rundir.step_dir(src) is None:
        raise SystemExit(f"{args.src} holds no checkpoints/N; give a pre-training workdir")
    if os.path.exists(dst):
        raise SystemExit(f"{args.dst} exists; give a new directory (nothing is overwritten)")
    if not all(x > 0 for x in (args.scale_word, args.scale_inputs)):
        raise SystemExit("--scale_word and --scale_inputs must be positive")

    import flax
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from bertjax import model as model_lib

    run = rundir.resolve(src, "--src")  # the newest complete step
    step = run.step
    cfg = run.model_config()
    if cfg.scan_layers:  # checked before anything is written
        raise SystemExit(f"{args.src} was trained with scan_layers; ablation reads per-layer runs")
    ids = np.zeros((1, 8), np.int32)
    fresh = flax.linen.meta.unbox(model_lib.BertForPreTraining(cfg).init(
        jax.random.key(args.seed), ids, np.ones_like(ids), ids, np.zeros((1, 1), np.int32))
        ["params"])["bert"]
    fresh = jax.tree.map(np.asarray, flax.core.unfreeze(fresh))

    tmp = dst + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("tb", "checkpoints"))
    shutil.copytree(run.step_dir, os.path.join(tmp, "checkpoints", str(step)))
    state_dir = os.path.join(tmp, "checkpoints", str(step), "state")
    tree = ocp.PyTreeCheckpointer().restore(state_dir)
    tree["params"]["bert"] = ablate(tree["params"]["bert"], fresh, reset, args.scale_word,
                                    args.scale_inputs)
    shutil.rmtree(state_dir)
    ocp.PyTreeCheckpointer().save(state_dir, tree)
    os.replace(tmp, dst)
    norm = np.linalg.norm(tree["params"]["bert"]["embeddings"]["word_embeddings"]["embedding"],
                          axis=-1).mean()
    print(f"{args.dst}: step {step} of {args.src}, reset {args.reset or 'nothing'}, "
          f"word-embedding row norm {norm:.4f}")


if __name__ == "__main__":
    main()
