"""Pre-trained vs from scratch on downstream tasks built from real text the encoder never saw.

A pre-trained encoder that fine-tunes worse than random initialisation is a defect. This script
builds three tasks from English prose that is *not* in the embedded pre-training corpus (the
docstrings of the third-party packages installed beside bertjax: numpy, scipy, torch, jax, ...,
read with the same parser as the corpus, never imported) plus the README's word-order demo, and
fine-tunes ``--init_from`` and the same model from scratch on each, at the fine-tuning configs'
default learning rate and at a second one, through the public command line
(``python -m bertjax.finetune --config=configs/glue.py:task=custom ... --config.compare_scratch``).

Tasks (every sentence 8-40 words, mostly letters; train and dev share no sentence):
  topic25   which of 25 packages a sentence documents (4,000 train, 1,000 dev; chance 0.04)
  replaced  is the sentence as written, or was one interior word replaced by another word of
            the corpus, drawn by frequency? (2,000 / 1,000; chance 0.5)
  pairs     do two sentences come from the same package? (2,000 / 1,000 pairs; chance 0.5)
  order     the README demo (configs/demo.py): word order on held-out stdlib sentences

Usage:
  python scripts/downstream_check.py --init_from=runs/bert_tiny --workdir=runs/downstream \\
      [--tasks=topic25,replaced,pairs,order] [--lrs=default,3e-4] [--poolings=default]
      [--seeds=0,1,2] [--data_seed=0]

The task data are drawn once (``--data_seed``); every fine-tuning seed (``--seeds``: head
initialisation, the scratch model's initialisation, example order) fine-tunes both arms on the
same data. Prints one line per task, learning rate and seed (pre-trained, scratch, difference),
then per task and rate the mean difference over the seeds with its standard error, beside the
dev set's majority-class rate (a classifier that learnt nothing scores that); writes
``WORKDIR/summary.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import sysconfig

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bertjax.data import corpus, text  # noqa: E402  (plain Python, no TensorFlow)

MIN_WORDS, MAX_WORDS = 8, 40
_WORD = re.compile(r"[a-z]+")


def package_sentences(site: str, cap: int = 1500) -> dict[str, list[str]]:
    """{top-level package: up to ``cap`` usable docstring sentences}, packages sorted.

    Files are read in sorted order until a package has ``cap`` sentences; a sentence found in
    more than one package (vendored or re-exported text) is dropped from all of them.
    """
    found = {}
    for name in sorted(os.listdir(site)):
        path = os.path.join(site, name)
        if not os.path.isdir(path) or not name.isidentifier() or name.startswith("_"):
            continue
        seen = {}
        for doc in corpus.stdlib_documents(path):
            for s in text.document_sentences(doc):
                s = " ".join(s.split())
                words = s.split()
                letters = sum(c.isalpha() or c == " " for c in s)
                if MIN_WORDS <= len(words) <= MAX_WORDS and letters >= 0.85 * len(s):
                    seen.setdefault(s, None)
            if len(seen) >= cap:
                break
        if seen:
            found[name] = list(seen)[:cap]
    owners = collections.Counter(s for v in found.values() for s in v)
    return {k: [s for s in v if owners[s] == 1] for k, v in found.items()}


def _write(path: str, header: list[str], rows: list[tuple]) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        for r in rows:
            f.write("\t".join(str(x).replace("\t", " ") for x in r) + "\n")
    os.replace(path + ".tmp", path)


def make_topic(pkgs: dict[str, list[str]], rng, n_classes=25, n_train=160, n_dev=40):
    big = sorted((p for p in pkgs if len(pkgs[p]) >= n_train + n_dev),
                 key=lambda p: -len(pkgs[p]))[:n_classes]
    if len(big) < n_classes:
        raise SystemExit(f"only {len(big)} packages have {n_train + n_dev} sentences; "
                         f"need {n_classes}")
    big = sorted(big)
    train, dev = [], []
    for p in big:
        picked = [pkgs[p][i] for i in rng.permutation(len(pkgs[p]))[:n_train + n_dev]]
        train += [(s, p) for s in picked[:n_train]]
        dev += [(s, p) for s in picked[n_train:]]
    return ([train[i] for i in rng.permutation(len(train))],
            [dev[i] for i in rng.permutation(len(dev))], big)


def make_replaced(pkgs: dict[str, list[str]], rng, n_train=2000, n_dev=1000):
    pool = [s for p in sorted(pkgs) for s in pkgs[p]]
    counts = collections.Counter(w for s in pool for w in s.split() if _WORD.fullmatch(w))
    vocab = sorted(counts)
    prob = np.array([counts[w] for w in vocab], float)
    prob /= prob.sum()
    rows = []
    for i in rng.permutation(len(pool)):
        words = pool[i].split()
        pos = [j for j in range(1, len(words) - 1) if _WORD.fullmatch(words[j])]
        if not pos:
            continue
        if rng.random() < 0.5:
            rows.append((pool[i], "original"))
        else:
            j = pos[rng.integers(len(pos))]
            new = words[j]
            while new == words[j]:
                new = vocab[rng.choice(len(vocab), p=prob)]
            words[j] = new
            rows.append((" ".join(words), "replaced"))
        if len(rows) == n_train + n_dev:
            break
    return rows[:n_train], rows[n_train:]


def make_pairs(pkgs: dict[str, list[str]], rng, n_train=2000, n_dev=1000):
    names = sorted(p for p in pkgs if len(pkgs[p]) >= 20)
    rows = []
    used = set()
    while len(rows) < n_train + n_dev:
        p = names[rng.integers(len(names))]
        a = pkgs[p][rng.integers(len(pkgs[p]))]
        if rng.random() < 0.5:
            q, label = p, "same"
        else:
            q = p
            while q == p:
                q = names[rng.integers(len(names))]
            label = "different"
        b = pkgs[q][rng.integers(len(pkgs[q]))]
        if a == b or a in used or b in used:
            continue
        used.update((a, b))
        rows.append((a, b, label))
    return rows[:n_train], rows[n_train:]


def build_tasks(directory: str, seed: int) -> dict[str, dict]:
    site = sysconfig.get_paths()["purelib"]
    cache = os.path.join(directory, "data", "sentences.json")
    if os.path.exists(cache):
        with open(cache) as f:
            pkgs = json.load(f)
    else:
        pkgs = package_sentences(site)
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        with open(cache + ".tmp", "w") as f:
            json.dump(pkgs, f)
        os.replace(cache + ".tmp", cache)
    rng = np.random.default_rng(seed)
    specs = {}
    train, dev, labels = make_topic(pkgs, rng)
    specs["topic25"] = dict(train=train, dev=dev, header=["sentence", "label"],
                            labels=labels, text_b="")
    train, dev = make_replaced(pkgs, rng)
    specs["replaced"] = dict(train=train, dev=dev, header=["sentence", "label"],
                             labels=["original", "replaced"], text_b="")
    train, dev = make_pairs(pkgs, rng)
    specs["pairs"] = dict(train=train, dev=dev, header=["sentence", "other", "label"],
                          labels=["different", "same"], text_b="other")
    out = {}
    for name, s in specs.items():
        d = os.path.join(directory, "data", name)
        os.makedirs(d, exist_ok=True)
        _write(os.path.join(d, "train.tsv"), s["header"], s["train"])
        _write(os.path.join(d, "dev.tsv"), s["header"], s["dev"])
        out[name] = dict(train=os.path.join(d, "train.tsv"), dev=os.path.join(d, "dev.tsv"),
                         labels=",".join(s["labels"]), text_b=s["text_b"],
                         n=(len(s["train"]), len(s["dev"])))
    out["_packages"] = {"site": site, "packages": len(pkgs),
                        "sentences": sum(len(v) for v in pkgs.values())}
    return out


def majority_rate(dev_tsv: str) -> float:
    """The share of the dev set's most frequent label (the last column)."""
    with open(dev_tsv, encoding="utf-8") as f:
        labels = [line.rstrip("\n").split("\t")[-1] for line in f][1:]
    return max(collections.Counter(labels).values()) / len(labels)


def finetune(args, task: str, spec: dict | None, lr: str, pooling: str, workdir: str,
             seed: int) -> dict:
    py = sys.executable
    if task == "order":
        cmd = [py, "-m", "bertjax.finetune", "--config=configs/demo.py"]
    else:
        cmd = [py, "-m", "bertjax.finetune", "--config=configs/glue.py:task=custom",
               f"--config.data.train={spec['train']}", f"--config.data.dev={spec['dev']}",
               "--config.data.text_a=sentence", f"--config.data.labels={spec['labels']}",
               "--config.data.examples_per_row=4"]
        if spec["text_b"]:
            cmd.append(f"--config.data.text_b={spec['text_b']}")
    cmd += [f"--config.init_from={args.init_from}", "--config.compare_scratch=True",
            f"--config.seed={seed}", f"--workdir={workdir}", "--config.tensorboard=False",
            "--config.progress_bar=False", "--overwrite"]
    if lr != "default":
        cmd.append(f"--config.optim.lr={lr}")
    if pooling != "default":
        cmd.append(f"--config.pooling={pooling}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{task} lr={lr}: fine-tuning failed (exit {proc.returncode})")
    res = {}
    for tag, path in (("pretrained", workdir), ("scratch", os.path.join(workdir, "scratch"))):
        with open(os.path.join(path, "metrics.json")) as f:
            m = json.load(f)
        res[tag] = m["dev"][m["headline"]]
        res["headline"] = m["headline"]
        res["steps"] = m["steps"]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init_from", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--tasks", default="topic25,replaced,pairs,order")
    ap.add_argument("--lrs", default="default,3e-4")
    ap.add_argument("--poolings", default="default",
                    help="comma-separated: default (the config's), mean, cls")
    ap.add_argument("--seeds", default="0",
                    help="comma-separated fine-tuning seeds (both arms, same data)")
    ap.add_argument("--data_seed", type=int, default=0, help="draws the tasks' examples")
    args = ap.parse_args()
    try:
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds={args.seeds}: expected comma-separated integers, e.g. 0,1,2")
    if not os.path.exists(args.init_from):
        raise SystemExit(f"--init_from={args.init_from} does not exist; give a pre-training "
                         "workdir (python -m bertjax.pretrain writes runs/bert_tiny)")
    tasks = args.tasks.split(",")
    unknown = set(tasks) - {"topic25", "replaced", "pairs", "order"}
    if unknown:
        raise SystemExit(f"--tasks: unknown {sorted(unknown)}; expected topic25, replaced, "
                         "pairs, order")
    specs = build_tasks(args.workdir, args.data_seed)
    print(f"corpus: {specs['_packages']['sentences']} sentences from "
          f"{specs['_packages']['packages']} packages in {specs['_packages']['site']}",
          flush=True)
    results, summary = [], []
    for task in tasks:
        for pooling in args.poolings.split(","):
            for lr in args.lrs.split(","):
                diffs = []
                for seed in seeds:
                    wd = os.path.join(args.workdir, f"{task}-lr{lr}-{pooling}-s{seed}")
                    r = finetune(args, task, specs.get(task), lr, pooling, wd, seed)
                    r.update(task=task, lr=lr, pooling=pooling, seed=seed)
                    results.append(r)
                    diffs.append(r["pretrained"] - r["scratch"])
                    print(f"{task:9s} lr {lr:8s} pooling {pooling:8s} seed {seed}  "
                          f"{r['headline']} pre-trained {r['pretrained']:.4f}  scratch "
                          f"{r['scratch']:.4f}  difference {diffs[-1]:+.4f}  "
                          f"({r['steps']} steps)", flush=True)
                dev = specs[task]["dev"] if task in specs else os.path.join(
                    wd, "data", "dev.tsv")
                row = dict(task=task, lr=lr, pooling=pooling, seeds=seeds,
                           mean_difference=float(np.mean(diffs)),
                           standard_error=(float(np.std(diffs, ddof=1) / np.sqrt(len(diffs)))
                                           if len(diffs) > 1 else None),
                           majority=majority_rate(dev) if os.path.exists(dev) else None)
                summary.append(row)
    print("task      lr       pooling  seeds  mean difference (s.e.)  dev majority rate")
    for r in summary:
        se = f"({r['standard_error']:.4f})" if r["standard_error"] is not None else "(-)"
        maj = f"{r['majority']:.3f}" if r["majority"] is not None else "-"
        print(f"{r['task']:9s} {r['lr']:8s} {r['pooling']:8s} {len(r['seeds']):5d}  "
              f"{r['mean_difference']:+.4f} {se:10s}  {maj}")
    with open(os.path.join(args.workdir, "summary.json"), "w") as f:
        json.dump({"init_from": args.init_from, "results": results, "summary": summary}, f,
                  indent=1)


if __name__ == "__main__":
    main()
