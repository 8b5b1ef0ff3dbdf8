"""Shared fixtures for the data tests: a small slice of the embedded corpus, prepared once.

150 standard-library modules (~0.7 MB, ~230k tokens with a 1000-piece vocabulary) in 4 shards:
big enough for statistics over 100k masked tokens, small enough to prepare in ~10 s on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from bertjax.data import corpus
from bertjax.data import prepare as prepare_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB = 1000
NUM_SHARDS = 4


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("corpus") / "stdlib.txt")
    corpus.write_embedded_corpus(path, max_documents=150)
    return path


@pytest.fixture(scope="session")
def settings() -> dict:
    """The preparation settings of `prepared` (in-process: 1 process)."""
    return {"vocab_size": VOCAB, "num_shards": NUM_SHARDS, "eval_fraction": 0.05, "processes": 1}


@pytest.fixture(scope="session")
def prepared(corpus_file, settings, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("prepared"))
    meta = prepare_lib.prepare(prepare_lib.PrepareConfig(input=corpus_file, output=out, **settings))
    assert meta is not None
    return out


def _run_cli(*args: str, module: str = "bertjax.prepare") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def cli():
    """cli(*args, module="bertjax.prepare"): `python -m module args` from the repository root."""
    return _run_cli


def _read_shard(path: str) -> list[tuple[int, np.ndarray]]:
    import tensorflow as tf

    spec = {"doc_id": tf.io.FixedLenFeature([1], tf.int64),
            "tokens": tf.io.RaggedFeature(tf.int64)}
    return [(int(x["doc_id"][0]), x["tokens"]) for x in tf.data.TFRecordDataset(path).map(
        lambda r: tf.io.parse_single_example(r, spec)).as_numpy_iterator()]


@pytest.fixture(scope="session")
def read_shard():
    """read_shard(path) -> [(doc_id, tokens)] for every document record of a prepared shard."""
    return _read_shard
