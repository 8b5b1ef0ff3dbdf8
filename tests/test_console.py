"""A quiet console (bertjax.console) and one kind of progress bar (bertjax.progress).

Commands run as a user runs them (subprocesses, their terminal captured): the terminal holds the
command's own lines only, and the log file holds the libraries' lines, the C++ ones of child
processes too. A stand-in command (``FAKE``: cli.start and cli.run around a main that writes
what libraries write) checks each way a command can end quickly; a real pre-training, its
and an embedding from it check it on TensorFlow's, XLA's and orbax's own lines.
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys

import pytest

from bertjax import console
from bertjax import progress
from tests import commands

# What the libraries print that a bertjax terminal must not show (absl's C++ lines before its
# initialisation carry the date 0000; orbax's warning about step metadata it looked for).
FOREIGN = re.compile(r"^[IWEF]0000 |absl::InitializeLog|oneDNN|Metadata file does not exist",
                     re.M)

FAKE = r'''
import logging, os, signal, subprocess, sys
from absl import flags
from bertjax import cli, console

_END = flags.DEFINE_string("end", "ok", "ok | refuse | crash | kill")
_WORKDIR = flags.DEFINE_string("workdir", "", "")
_LATER = flags.DEFINE_string("later", "", "")


def main(argv):
    cli.start(argv)
    os.write(2, b"I0000 00:00:1.0 1 port.cc:1] a C++ line before the run started\n")
    logging.getLogger("orbax").warning("a library's python warning")
    logging.getLogger("bertjax.fake").warning("bertjax's own warning")
    print("own line on stderr", file=sys.stderr, flush=True)
    if _LATER.value:
        console.log_to(_LATER.value, later=True)
    if _END.value == "refuse":
        cli.fail("--end=refuse: refused before the run started")
    if _WORKDIR.value:
        os.makedirs(_WORKDIR.value, exist_ok=True)
        console.log_to(_WORKDIR.value)
    child = "import os; os.write(2, b'E0000 a child process line\\n')"
    subprocess.run([sys.executable, "-c", child])  # a child process writes to descriptor 2
    print("own line on stdout", flush=True)
    if _END.value == "crash":
        raise RuntimeError("crashed on purpose")
    if _END.value == "kill":
        os.kill(os.getpid(), signal.SIGKILL)


cli.run(main)
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Runs FAKE with its own temporary directory and cache; returns (run, paths)."""
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    script = tmp_path / "fake_command.py"
    script.write_text(FAKE)
    paths = {"tmp": tmp_path / "tmp", "cache": tmp_path / "cache"}
    paths["tmp"].mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": commands.REPO, "TMPDIR": str(paths["tmp"]),
               "BERTJAX_CACHE": str(paths["cache"])}
        return subprocess.run([sys.executable, str(script), *args], env=env,
                              capture_output=True, text=True, timeout=120)

    return run, paths


def _own_lines_only(result: subprocess.CompletedProcess) -> None:
    assert "own line on stderr" in result.stderr, result.stderr
    assert "bertjax's own warning" in result.stderr, result.stderr
    for text in ("C++ line", "child process line", "a library's python warning"):
        assert text not in result.stdout + result.stderr, result.stderr


def _holds_the_libraries_lines(log: str) -> None:
    for text in ("C++ line before the run started", "E0000 a child process line",
                 "a library's python warning"):
        assert text in log, log
    assert "bertjax's own warning" not in log and "own line" not in log, log


def test_a_run_logs_the_libraries_into_its_workdir_appending(fake, tmp_path):
    run, paths = fake
    workdir = tmp_path / "run"
    first = run(f"--workdir={workdir}")
    assert first.returncode == 0, first.stderr
    assert first.stdout == "own line on stdout\n"
    _own_lines_only(first)
    log = (workdir / "logs" / "console.log").read_text()
    _holds_the_libraries_lines(log)  # before log_to (moved there), after it, from a child
    assert log.startswith("==> ") and "bertjax fake_command --workdir=" in log.splitlines()[0]
    again = run(f"--workdir={workdir}")
    assert again.returncode == 0, again.stderr
    both = (workdir / "logs" / "console.log").read_text()
    assert both.startswith(log) and both.count("==> ") == 2
    assert os.listdir(paths["tmp"]) == [] and not paths["cache"].exists()


def test_a_refused_input_leaves_no_log_anywhere(fake, tmp_path):
    run, paths = fake
    later = tmp_path / "existing"
    later.mkdir()
    result = run("--end=refuse", f"--later={later}")
    commands.assert_one_error(result, "--end=refuse")
    _own_lines_only(result)
    assert os.listdir(later) == [] and os.listdir(paths["tmp"]) == []
    assert not paths["cache"].exists()


def test_the_end_of_a_command_without_a_workdir(fake, tmp_path):
    run, paths = fake
    fallback = paths["cache"] / "logs" / "fake_command.log"
    ok = run()  # no directory: the command's log in the cache
    assert ok.returncode == 0 and ok.stderr.count("\n") == 2, ok.stderr
    _holds_the_libraries_lines(fallback.read_text())
    later = tmp_path / "made_by_the_run"
    later.mkdir()
    assert run(f"--later={later}").returncode == 0  # a directory named for the end takes it
    _holds_the_libraries_lines((later / "logs" / "console.log").read_text())
    crash = run("--end=crash")  # the traceback, then one line naming the log
    assert crash.returncode == 1 and "RuntimeError: crashed on purpose" in crash.stderr
    _own_lines_only(crash)
    assert crash.stderr.splitlines()[-1] == f"the libraries' log of this run: {fallback}"
    assert fallback.read_text().count("==> ") == 2
    assert os.listdir(paths["tmp"]) == []


def test_a_killed_command_still_has_its_log_and_says_where(fake, tmp_path):
    run, paths = fake
    workdir = tmp_path / "run"
    killed = run("--end=kill", f"--workdir={workdir}")
    assert killed.returncode == -9
    log = workdir / "logs" / "console.log"
    _holds_the_libraries_lines(log.read_text())
    # written by the log's writer process once the command is gone: the path and last lines
    note = killed.stderr.split("the process ended without finishing", 1)[1]
    assert str(log) in note and "E0000 a child process line" in note
    assert os.listdir(paths["tmp"]) == []


def test_verbose_shows_everything_on_the_terminal(fake, tmp_path, monkeypatch):
    run, paths = fake
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    workdir = tmp_path / "run"
    result = run(f"--workdir={workdir}")
    assert result.returncode == 0
    assert "C++ line before the run started" in result.stderr
    assert "E0000 a child process line" in result.stderr
    assert not (workdir / "logs").exists() and os.listdir(paths["tmp"]) == []


def test_which_log_records_are_bertjax_own():
    def record(name: str, path: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, path, 1, "m", (), None)

    loop = os.path.join(commands.REPO, "bertjax", "loop.py")
    assert console.is_bertjax(record("root", loop))  # logging.warning() in bertjax/loop.py
    assert console.is_bertjax(record("absl", loop))
    assert console.is_bertjax(record("bertjax.sharding", "elsewhere.py"))
    assert not console.is_bertjax(record("absl", "/site-packages/orbax/checkpoint/x.py"))
    assert not console.is_bertjax(record("py.warnings", "/usr/lib/python3/warnings.py"))
    assert not console.is_bertjax(record("bertjaxish", "x.py"))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_rules(monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    tty, pipe = _Terminal(), io.StringIO()
    assert progress.shown(stream=tty)
    assert not progress.shown(stream=pipe)  # captured output: no bar
    assert not progress.shown(wanted=False, stream=tty)  # config.progress_bar=False
    assert not progress.shown(chief=False, stream=tty)  # one process draws it
    monkeypatch.setenv(progress.PROGRESS_ENV, "0")
    assert not progress.shown(stream=tty)
    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    assert progress.shown(stream=pipe)
    assert not progress.shown(wanted=False, stream=pipe)
    assert not progress.shown(chief=False, stream=pipe)


def test_progress_bar_draws_on_stderr_and_lines_go_above_it(monkeypatch, capsys):
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    off = progress.bar(5, "step", "job")
    assert isinstance(off, progress.Off)  # pytest's captured stderr is no terminal
    with off:
        off.update(2)
        off.set_postfix(loss="1.0")
    assert off.n == 2 and capsys.readouterr() == ("", "")
    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    with progress.bar(4, "step", "job", initial=1) as bar:
        bar.update(3)
        bar.set_postfix(loss="0.5")
        progress.echo("a line of the job")
    out, err = capsys.readouterr()
    assert out == "a line of the job\n"
    assert "job: 100%" in err and "4/4" in err and "loss=0.5" in err


@pytest.mark.slow
def test_pretrain_and_embed_print_only_their_own_lines(tmp_path):
    """The README's kind of run, small: TensorFlow (TensorBoard), XLA and orbax all start;
    their lines are in WORKDIR/logs/console.log, the terminal has the summary and the bar."""
    workdir = tmp_path / "run"
    env = {"TF_CPP_MIN_LOG_LEVEL": "0",  # TensorFlow's INFO lines too: the log must take them
           "BERTJAX_PROGRESS": "1", "TMPDIR": str(tmp_path), "BERTJAX_CACHE": str(tmp_path)}
    args = (f"--workdir={workdir}", "--config.data.source=synthetic", "--config.total_steps=4",
            "--config.model.vocab_size=512", "--config.max_seq_length=32",
            "--config.max_predictions=5", "--config.global_batch_size=16",
            "--config.eval_batch_size=16", "--config.eval_every=100",
            "--config.checkpoint_every=2", "--config.optim.warmup_steps=1")
    result = commands.run("pretrain", *args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not FOREIGN.search(result.stdout + result.stderr), result.stderr[-3000:]
    assert "final train loss" in result.stdout
    assert re.search(r"pretrain: 100%.*4/4", result.stderr), result.stderr[-2000:]
    log = (workdir / "logs" / "console.log").read_text()
    assert FOREIGN.search(log) and log.startswith("==> "), log[:2000]
    # The encoder restored through orbax: no warning about metadata it need not read.
    sentences = tmp_path / "s.txt"
    sentences.write_text("the good cat\na bad dog\n")
    vocab = os.path.join(commands.REPO, "tests", "finetuning", "files", "finetune", "vocab")
    embedded = commands.run("embed", f"--init_from={workdir}", f"--input={sentences}",
                            f"--output={tmp_path / 'e.npy'}", f"--tokenizer={vocab}", env=env)
    assert embedded.returncode == 0, embedded.stderr[-3000:]
    assert not FOREIGN.search(embedded.stdout + embedded.stderr), embedded.stderr[-3000:]
    assert re.search(r"embed: 100%.*2/2", embedded.stderr), embedded.stderr[-2000:]
    fallback = tmp_path / "logs" / "embed.log"
    assert "Metadata file does not exist" not in (
        fallback.read_text() if fallback.exists() else "")
    assert not [n for n in os.listdir(tmp_path) if n.startswith("bertjax-")]


def test_a_refused_command_creates_no_workdir_and_no_log(tmp_path):
    workdir = tmp_path / "run"
    result = commands.run("pretrain", f"--workdir={workdir}", "--config.data.source=synthetic",
                          "--config.total_steps=4", "--config.optim.warmup_steps=50",
                          env={"TMPDIR": str(tmp_path), "BERTJAX_CACHE": str(tmp_path / "c"),
                               "TF_CPP_MIN_LOG_LEVEL": "0"})
    commands.assert_one_error(result, "config.optim.warmup_steps=50")
    assert result.stdout == "" and result.stderr.count("\n") == 1
    assert os.listdir(tmp_path) == []
