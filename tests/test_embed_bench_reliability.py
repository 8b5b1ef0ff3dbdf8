"""bertjax.embed and bertjax.bench on bad input: one ``error:`` line, exit 2, no traceback,
nothing computed or written (an existing output's checksums unchanged).

The encoder is a tiny import whose tokenizer is the fine-tuning tests' WordPiece vocabulary;
the benchmark's refusals all come before anything is compiled.
"""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from bertjax import model as model_lib
from commands import assert_one_error, checksums, run

VOCAB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetuning", "files",
                         "finetune", "vocab")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> str:
    """A tiny import: checkpoints/0 plus a WordPiece vocab.txt."""
    from bertjax.interop import checkpoints as convert_io

    workdir = str(tmp_path_factory.mktemp("encoder") / "workdir")
    with open(os.path.join(VOCAB_DIR, "vocab.txt")) as f:
        vocab_size = sum(1 for _ in f)
    cfg = model_lib.BertConfig(vocab_size=vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                               intermediate_size=64, max_position_embeddings=64)
    ids = jnp.zeros((1, 8), jnp.int32)
    params = model_lib.BertForPreTraining(cfg).init(
        jax.random.PRNGKey(0), ids, ids, ids, jnp.zeros((1, 2), jnp.int32))["params"]
    convert_io.save_workdir_state(workdir, jax.tree.map(np.asarray, nn.meta.unbox(params)), cfg)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(VOCAB_DIR, name), workdir)
    return workdir


@pytest.fixture
def sentences(tmp_path) -> str:
    path = tmp_path / "sentences.txt"
    path.write_text("the good cat\nan old car sits\n")
    return str(path)


def _embed(encoder: str, *args: str):
    return run("embed", f"--init_from={encoder}", "--batch_size=8", "--max_seq_length=16", *args)


# --- case 4: an existing --output ---------------------------------------------------------------

def test_existing_npy_is_refused_unless_overwrite(encoder, sentences, tmp_path):
    out = tmp_path / "emb.npy"
    np.save(out, np.arange(6.0))
    before = checksums(str(out))
    assert_one_error(_embed(encoder, f"--input={sentences}", f"--output={out}"),
                     f"--output={out} already exists", "--overwrite")
    assert checksums(str(out)) == before
    assert sorted(os.listdir(tmp_path)) == ["emb.npy", "sentences.txt"]
    replaced = _embed(encoder, f"--input={sentences}", f"--output={out}", "--overwrite")
    assert replaced.returncode == 0, (replaced.stdout + replaced.stderr)[-3000:]
    assert np.load(out).shape == (2, 32)
    assert sorted(os.listdir(tmp_path)) == ["emb.npy", "sentences.txt"]


def test_existing_similarities_file_is_refused_too(encoder, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("the good cat\ta good cat\n")
    out = tmp_path / "sims.tsv"
    out.write_text("keep me\n")
    assert_one_error(_embed(encoder, f"--pairs={pairs}", f"--output={out}"),
                     f"--output={out} already exists", "--overwrite")
    assert out.read_text() == "keep me\n"


def test_output_that_is_a_directory(encoder, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("the good cat\ta good cat\n")
    (tmp_path / "out").mkdir()
    assert_one_error(_embed(encoder, f"--pairs={pairs}", f"--output={tmp_path / 'out'}"),
                     "is a directory", "give a file name")
    assert os.listdir(tmp_path / "out") == []


# --- case 6: more bad embed inputs ---------------------------------------------------------------

def test_empty_input_file(encoder, tmp_path):  # pinned: already one line
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_one_error(_embed(encoder, f"--input={empty}", f"--output={tmp_path / 'e.npy'}"),
                     str(empty), "empty file", "one sentence per line")
    assert sorted(os.listdir(tmp_path)) == ["empty.txt"]


def test_pairs_file_with_one_column(encoder, tmp_path):  # pinned: already one line
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("a sentence and no partner\n")
    assert_one_error(_embed(encoder, f"--pairs={pairs}"), f"{pairs}:1",
                     "1 tab-separated fields", "two tab-separated sentences")


def test_unknown_pooling(encoder, sentences, tmp_path):  # pinned: the flag's own check
    assert_one_error(_embed(encoder, f"--input={sentences}", f"--output={tmp_path / 'e.npy'}",
                            "--pooling=max"), "--pooling=max", "mean|cls")


def test_init_from_a_prepared_data_directory(sentences, tmp_path):  # pinned: already one line
    data = tmp_path / "prepared"
    data.mkdir()
    (data / "metadata.json").write_text("{}")
    (data / "train-00000-of-00001.tfrecord").write_bytes(b"")
    assert_one_error(_embed(str(data), f"--input={sentences}", f"--output={tmp_path / 'e.npy'}"),
                     f"--init_from='{data}'", "holds no complete bertjax checkpoint")
    assert not (tmp_path / "e.npy").exists()


def test_encoder_checkpoint_with_its_arrays_gone(encoder, sentences, tmp_path):
    """Was a traceback from orbax; now one line naming the step directory."""
    damaged = tmp_path / "damaged"
    shutil.copytree(encoder, damaged)
    state = damaged / "checkpoints" / "0" / "state"
    for name in os.listdir(state):
        if name != "_METADATA":
            shutil.rmtree(state / name) if (state / name).is_dir() else (state / name).unlink()
    before = checksums(str(damaged))
    result = _embed(str(damaged), f"--input={sentences}", f"--output={tmp_path / 'e.npy'}")
    assert_one_error(result, f"--init_from={damaged}", str(damaged / "checkpoints" / "0"),
                     "cannot be read", "damaged")
    assert checksums(str(damaged)) == before and not (tmp_path / "e.npy").exists()


@pytest.mark.parametrize("flag, fragments", [
    ("--max_seq_length=2", ("--max_seq_length=2", "at least 3")),
    ("--batch_size=0", ("--batch_size=0", "positive number")),
    ("--batch_size=12", ("--batch_size=12", "use a multiple of 8")),
])
def test_nonsense_sizes(encoder, sentences, tmp_path, flag, fragments):
    result = _embed(encoder, f"--input={sentences}", f"--output={tmp_path / 'e.npy'}", flag)
    line = assert_one_error(result, *fragments)
    assert "config." not in line  # this command's flags are named, not config keys
    assert not (tmp_path / "e.npy").exists()


# --- case 3 and 6: bench flags ------------------------------------------------------------------

def _bench(*args: str):
    return run("bench", "--preset=tiny", "--batch=16", "--seq_len=32", "--steps=1",
               "--warmup=0", "--matmul_size=64", *args, timeout=120)


@pytest.mark.parametrize("flag, fragments", [
    ("--batch=0", ("--batch=0", "sequences per step >= 1")),  # was: ran the config's batch
    ("--seq_len=0", ("--seq_len=0", "tokens per sequence >= 8")),  # was: the config's length
    ("--seq_len=-4", ("--seq_len=-4", "tokens per sequence >= 8")),
    ("--max_predictions=0", ("--max_predictions=0", ">= 1")),  # was: the default
    ("--accum_steps=0", ("--accum_steps=0", ">= 1")),
    ("--steps=-1", ("--steps=-1", "steps >= 1")),  # pinned
    ("--warmup=-1", ("--warmup=-1", "warmup >= 0")),  # pinned
    ("--dtype=float16", ("--dtype=float16", "float32|bfloat16")),  # pinned: the flag's check
    ("--mesh=2,2", ("--mesh='2,2'", "three integers")),  # pinned
    ("--mesh=3,1,1", ("3×1×1=3", "8 devices")),  # pinned
    ("--matmul_size=-5", ("--matmul_size=-5", "or 0 for the default")),  # was: a traceback
])
def test_bench_nonsense_flags(flag, fragments):
    assert_one_error(_bench(flag), *fragments)


def test_bench_outputs_that_cannot_be_written_stop_it_before_it_runs(tmp_path):
    """Without the check the benchmark ran to its end and then failed with a traceback."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert_one_error(_bench(f"--json={tmp_path}"), f"--json={tmp_path} is a directory")
    assert_one_error(_bench(f"--json={a_file}/bench.json"), f"{a_file} is a file")
    assert_one_error(_bench(f"--profile_dir={a_file}"), f"--profile_dir={a_file} is a file")
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"] and a_file.read_text() == "x"
