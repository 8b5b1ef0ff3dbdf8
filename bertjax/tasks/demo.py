"""The README demo: which standard-library package does a docstring sentence come from?

A binary task derived offline and deterministically from the embedded corpus (bertjax.data.corpus):
sentences from the docstrings of ``asyncio`` versus those of ``email``. Sentences that name either
package are left out, so the label has to be read from the vocabulary and phrasing (event loops,
futures and transports versus headers, MIME parts and policies), which is what pre-training on
the same kind of prose should teach. The train set is kept small on purpose: with a few hundred
labelled examples a pre-trained encoder has something to add over one trained from scratch.

``compare`` fine-tunes the pre-trained encoder and, with the same model, steps and data, one from
random initialisation, and prints the two dev scores side by side.
"""

from __future__ import annotations

import ast
import os
import sysconfig
from typing import Any

import ml_collections
import numpy as np

from bertjax.data import corpus
from bertjax.data import text

PACKAGES = ("asyncio", "email")


def package_sentences(package: str, root: str | None = None) -> list[str]:
    """Distinct sentences (6+ words, not naming a demo package) of one stdlib package's
    docstrings, in the corpus's order."""
    root = root or sysconfig.get_paths()["stdlib"]
    out, seen = [], set()
    for path in corpus._stdlib_files(os.path.join(root, package)):  # the corpus's own walk
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), filename=path)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for doc in corpus._docstrings_in_order(tree):
            for paragraph in corpus._paragraphs(doc):
                for s in text.split_sentences(paragraph):
                    s = " ".join(s.split())
                    low = s.lower()
                    if len(s.split()) >= 6 and s not in seen and not any(
                            p in low for p in PACKAGES):
                        seen.add(s)
                        out.append(s)
    return out


def write_demo_data(directory: str, train_size: int, dev_size: int,
                    seed: int = 0) -> tuple[str, str, dict[str, int]]:
    """Writes balanced train.tsv / dev.tsv (columns sentence, label) into ``directory``.

    Returns:
      (train path, dev path, {"train": n, "dev": n, "available": per-class minimum}).
    """
    per_class = [package_sentences(p) for p in PACKAGES]
    available = min(len(s) for s in per_class)
    rng = np.random.default_rng(seed)
    splits = {"train": [], "dev": []}
    n_train, n_dev = min(train_size // 2, available // 2), min(dev_size // 2, available // 2)
    for label, sentences in zip(PACKAGES, per_class):
        order = rng.permutation(len(sentences))
        picked = [sentences[i] for i in order]
        # Dev first from the back of the permutation: the two splits never share a sentence.
        splits["dev"] += [(s, label) for s in picked[-n_dev:]]
        splits["train"] += [(s, label) for s in picked[:n_train]]
    os.makedirs(directory, exist_ok=True)
    paths = []
    for name, rows in splits.items():
        rows = [rows[i] for i in rng.permutation(len(rows))]
        path = os.path.join(directory, f"{name}.tsv")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write("sentence\tlabel\n")
            f.writelines(f"{s}\t{label}\n" for s, label in rows)
        os.replace(path + ".tmp", path)
        paths.append(path)
    return paths[0], paths[1], {"train": len(splits["train"]), "dev": len(splits["dev"]),
                                "available": available}


def prepare(config: Any, workdir: str) -> None:
    """Points ``config.data`` at the demo files, writing them into ``workdir/data`` (chief)."""
    from bertjax import multihost

    d = config.data
    directory = os.path.join(workdir, "data")
    if multihost.is_chief():
        write_demo_data(directory, d.demo_train or 400, d.demo_dev or 400, config.seed)
    multihost.barrier("demo data written")
    with config.unlocked():
        d.train, d.dev = os.path.join(directory, "train.tsv"), os.path.join(directory, "dev.tsv")
        d.text_a, d.label, d.labels, d.format = "sentence", "label", ",".join(PACKAGES), "tsv"


def compare(config: Any, workdir: str, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tunes from ``config.init_from`` and from scratch (workdir/scratch), same steps."""
    from bertjax import multihost
    from bertjax.tasks import classify

    pre = classify.run(config, workdir, overwrite=overwrite, tag="pre-trained")
    scratch_config = ml_collections.ConfigDict(config.to_dict())  # model/tokenizer now recorded
    scratch_config.init_from = ""
    scratch = classify.run(scratch_config, os.path.join(workdir, "scratch"), overwrite=overwrite,
                           tag="scratch")
    head = pre["headline"]
    if multihost.is_chief():
        print(f"\n{'dev ' + head:<22}{'pre-trained':>12}{'from scratch':>14}")
        for key in [head] + [k for k in pre["dev"] if k not in (head, "examples")]:
            print(f"{key:<22}{pre['dev'][key]:>12.4f}{scratch['dev'][key]:>14.4f}")
        print(f"{'steps':<22}{pre['steps']:>12}{scratch['steps']:>14}")
        print(f"{'seconds':<22}{pre['seconds']:>12.1f}{scratch['seconds']:>14.1f}")
        print(f"(dev examples: {pre['dev']['examples']}, train examples: "
              f"{pre['train_examples']}; workdirs {workdir} and {workdir}/scratch)", flush=True)
    return {"pretrained": pre, "scratch": scratch}
