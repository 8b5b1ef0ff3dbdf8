"""The GLUE suite (bertjax.finetuning.glue_suite, python -m bertjax.glue) on a tiny fake GLUE dir.

The directory is written by the test in the GLUE layout (SST-2/, STS-B/, MRPC/ with their real
column layouts, and a CoLA/ without train.tsv that must be skipped); labels follow learnable
rules over the words of tests/finetuning/files/finetune/vocab ("good" in the sentence). The encoder is
test_finetune's tiny imported workdir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bertjax.finetuning import glue_suite
from bertjax.finetuning.defaults import finetune_config
from test_finetune import imported  # noqa: F401  (module fixture: the tiny imported workdir)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = ("the a cat dog bird fish tree house car road river sun moon sky runs sits sees eats big "
         "small red blue green old new fast slow near far").split()


def _sentence(rng: np.random.Generator, good: bool) -> str:
    words = list(rng.choice(WORDS, rng.integers(3, 7)))
    if good:
        words.insert(int(rng.integers(0, len(words) + 1)), "good")
    return " ".join(words)


def _write(path, header: list[str], rows: list[list]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))


MNLI_COLUMNS = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
                "sentence2"]


def fake_mnli(root: str, rng: np.random.Generator) -> None:
    """MNLI in the GLUE layout (gold label: entailment when "good" is in the hypothesis, else
    contradiction): train, dev_matched, dev_mismatched, test_matched (7 rows), test_mismatched
    (5), and the diagnostic set diagnostic/diagnostic.tsv (index, sentence1, sentence2; 6)."""
    def pairs(n):
        goods = rng.random(n) < 0.5
        return [(_sentence(rng, False), _sentence(rng, g), g) for g in goods]

    for name, n in (("train", 64), ("dev_matched", 24), ("dev_mismatched", 16)):
        _write(os.path.join(root, "MNLI", f"{name}.tsv"), MNLI_COLUMNS + ["label1", "gold_label"],
               [[i, i, f"{i}e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", a, b,
                 *(["entailment" if g else "contradiction"] * 2)]
                for i, (a, b, g) in enumerate(pairs(n))])
    for name, n in (("test_matched", 7), ("test_mismatched", 5)):
        _write(os.path.join(root, "MNLI", f"{name}.tsv"), MNLI_COLUMNS,
               [[i, i, f"{i}n", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", a, b]
                for i, (a, b, _) in enumerate(pairs(n))])
    _write(os.path.join(root, "diagnostic", "diagnostic.tsv"), ["index", "sentence1", "sentence2"],
           [[i, a, b] for i, (a, b, _) in enumerate(pairs(6))])


def fake_glue(root: str, seed: int = 0, mnli: bool = False) -> None:
    """SST-2 (label: "good" present), MRPC (label: "good" in #1), STS-B (score: 2.5 x the
    sentences holding "good"), each with train/dev (SST-2 also test); CoLA with dev only;
    with ``mnli``, MNLI and the diagnostic set too (``fake_mnli``)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", 64), ("dev", 24)):
        goods = rng.random((n, 2)) < 0.5
        pairs = [(_sentence(rng, g1), _sentence(rng, g2)) for g1, g2 in goods]
        _write(os.path.join(root, "SST-2", f"{split}.tsv"), ["sentence", "label"],
               [[a, int(g1)] for (a, _), (g1, _) in zip(pairs, goods)])
        _write(os.path.join(root, "MRPC", f"{split}.tsv"),
               ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
               [[int(g1), 100 + i, 200 + i, a, b] for i, ((a, b), (g1, _))
                in enumerate(zip(pairs, goods))])
        _write(os.path.join(root, "STS-B", f"{split}.tsv"),
               ["index", "genre", "filename", "year", "old_index", "source1", "source2",
                "sentence1", "sentence2", "score"],
               [[i, "main", "x", "2012", f"{i:04d}", "none", "none", a, b,
                 f"{2.5 * (g1 + g2):.3f}"] for i, ((a, b), (g1, g2))
                in enumerate(zip(pairs, goods))])
    _write(os.path.join(root, "SST-2", "test.tsv"), ["index", "sentence"],
           [[i, _sentence(rng, i % 2 == 0)] for i in range(10)])
    _write(os.path.join(root, "CoLA", "dev.tsv"), ["x"], [["only a dev file"]])
    if mnli:
        fake_mnli(root, rng)


def tiny_config():
    c = finetune_config("sst2")
    c.max_seq_length, c.global_batch_size, c.eval_batch_size = 32, 16, 8
    c.total_steps, c.eval_every, c.optim.lr = 12, 12, 2e-3
    c.model.hidden_dropout = c.model.attention_dropout = 0.0
    return c


@pytest.mark.slow
def test_suite_runs_tasks_summarises_and_resumes(imported, tmp_path, capsys):
    glue_dir, workdir = str(tmp_path / "glue"), str(tmp_path / "runs")
    fake_glue(glue_dir)
    tasks = glue_suite.parse_tasks("cola,sst2,sts-b")  # MRPC is there but not asked for
    summary = glue_suite.run_suite(tiny_config(), glue_dir, workdir, tasks, imported)
    out = capsys.readouterr().out
    assert f"skip cola: {os.path.join(glue_dir, 'CoLA', 'train.tsv')} not found" in out
    assert summary["skipped"] == {"cola": f"{os.path.join(glue_dir, 'CoLA', 'train.tsv')} "
                                          "not found"}
    assert [r["task"] for r in summary["tasks"]] == ["sst2", "stsb"]
    # The average, recomputed from each task's own metrics.json: the mean over tasks of the
    # mean of the task's GLUE metrics.
    scores = {}
    for task, names in (("sst2", ["accuracy"]), ("stsb", ["pearson", "spearman"])):
        with open(os.path.join(workdir, task, "metrics.json")) as f:
            m = json.load(f)
        assert m["steps"] == 12 and m["dev"]["examples"] == 24
        scores[task] = float(np.mean([m["dev"][n] for n in names]))
    assert all(np.isfinite(list(scores.values())))
    with open(os.path.join(workdir, "summary.json")) as f:
        written = json.load(f)
    assert written["average"] == pytest.approx(np.mean(list(scores.values())), abs=1e-12)
    assert {r["task"]: r["score"] for r in written["tasks"]} == pytest.approx(scores)
    md = open(os.path.join(workdir, "summary.md")).read()
    assert f"**{100 * written['average']:.1f}**" in md and "| stsb | Pearson/Spearman |" in md
    assert os.path.exists(os.path.join(workdir, "sst2", "predictions", "test.tsv"))
    assert not os.path.exists(os.path.join(workdir, "mrpc"))

    # A rerun resumes: every task finished, none is trained again, the same summary.
    stamps = {t: os.path.getmtime(os.path.join(workdir, t, "metrics.json")) for t in scores}
    again = glue_suite.run_suite(tiny_config(), glue_dir, workdir, tasks, imported)
    out = capsys.readouterr().out
    assert all(f"{t}: finished earlier" in out for t in scores)
    assert "step " not in out  # no training line
    assert {t: os.path.getmtime(os.path.join(workdir, t, "metrics.json"))
            for t in scores} == stamps
    assert again["average"] == pytest.approx(written["average"])


def test_all_tasks_missing_is_one_line_exit_2(imported, tmp_path):
    glue_dir = tmp_path / "glue"
    (glue_dir / "SST-2").mkdir(parents=True)  # a directory, but no files in it
    workdir = tmp_path / "runs"
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-m", "bertjax.glue", f"--glue_dir={glue_dir}",
                        f"--init_from={imported}", f"--workdir={workdir}", "--tasks=sst2,rte"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: --glue_dir={glue_dir}: none of")
    assert "SST-2/train.tsv not found" in lines[0] and "RTE/train.tsv not found" in lines[0]
    assert not workdir.exists()
