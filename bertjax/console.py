"""A quiet console: a command's terminal shows the command's own lines, and the start-up and
run-time noise of the libraries under it goes to a log file, never lost.

``quiet`` (called by ``bertjax.cli.start`` right after flag parsing, before JAX or TensorFlow
start) splits the process's output in two:

  * file descriptor 2, which child processes inherit, goes to the log: the C++ lines of
    TensorFlow, XLA, absl and sentencepiece (``I0000 ... port.cc] oneDNN custom operations``,
    ``WARNING: All log messages before absl::InitializeLog() ...``) land there, from data
    preparation workers too;
  * ``sys.stderr`` becomes a stream on the terminal (a duplicate of the old descriptor 2): the
    command's own lines, its one-line ``error:`` messages, tracebacks and progress bars stay
    where they were;
  * Python logging: records of bertjax's own modules (its warnings) go to the terminal as
    before; records of other libraries (jax, orbax, absl, tensorflow, ...) and Python warnings
    go to the log.

Descriptor 2 is a pipe to a small writer process (this file run as a script, standard library
only), so the log is complete whatever happens to the command, SIGKILL and a library's fatal
abort included. Where the log is:

  * while the command checks its input, a temporary file ($TMPDIR/bertjax-<command>-*.log);
  * once the run has really started in its directory (``log_to``, called where the workdir is
    locked and the checks have passed), DIRECTORY/logs/console.log, appended across reruns,
    each run after a ``==>`` header line naming the command;
  * a command names its directory early with ``log_to(path, later=True)``: a log that never
    settled (a finished run reported again, a crash or a kill before the workdir was ready, an
    output that only exists at the end: prepare's --output, an imported workdir) goes there
    when the command ends, if the directory exists then;
  * a command that ends without such a directory (embed, bench, an export to transformers)
    appends what the libraries said, if anything, to $BERTJAX_CACHE/logs/<command>.log
    (~/.cache/bertjax/logs by default);
  * a command refused for bad input (``refused``: exit status 2 before its run started) keeps
    no log and creates nothing: its temporary file is removed;
  * after a crash (``crashed``: a traceback) one last line on the terminal names the log; a
    process that ends without finishing (killed, or aborted by a library's fatal error: a
    lost peer of a multi-host job, a failed CHECK) gets that line and the log's last lines,
    from the writer, a moment after the process has gone.

To see everything on the terminal, as without this module: ``BERTJAX_VERBOSE=1`` in the
environment, or an explicit ``--verbosity=N`` (absl's flag; ``--verbosity=0`` also shows the
libraries' INFO lines). ``--debug`` is unrelated: it lets input errors' tracebacks through.

Nothing happens unless ``quiet`` ran in this process: library use, a notebook and the tests'
in-process runs are left alone.
"""

from __future__ import annotations

import atexit
import collections
import datetime
import faulthandler
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from typing import TextIO

VERBOSE_ENV = "BERTJAX_VERBOSE"
LOG_FILE = os.path.join("logs", "console.log")  # inside a run's directory
_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# A control line from the command to the writer, in the log's own stream (so it keeps its
# place among the libraries' lines); NUL never starts a line a library writes.
_MARK = b"\x00bertjax-console\t"
_FALLBACK_KEEP = 8 << 20  # bytes of a no-workdir log before it is rotated to <name>.1
_TAIL_LINES = 20  # shown after a process ended without finishing


class _State:
    """What ``quiet`` set up in this process."""

    def __init__(self, command: str, temp: str, terminal: TextIO):
        self.pid = os.getpid()  # a forked child inherits the state, not the job of finishing
        self.command = command
        self.temp = temp
        self.path: str | None = None  # the log in a directory, once ``log_to`` settled it
        self.later = ""  # the directory named to take it at the end
        self.terminal = terminal
        self.outcome = "ended"  # or "refused", "crashed"
        self.writer: subprocess.Popen | None = None


_state: _State | None = None


def verbose_requested() -> bool:
    """Whether $BERTJAX_VERBOSE asks for everything on the terminal (set and not 0/false/no)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def active() -> bool:
    """Whether this process's console is quiet (``quiet`` ran here)."""
    return _state is not None and _state.pid == os.getpid()


def quiet(command: str | None = None) -> bool:
    """Sends descriptor 2 and other libraries' Python logs to the log (a temporary file until
    ``log_to``) and keeps ``sys.stderr`` and bertjax's logging on the terminal; see the module
    docstring.

    Args:
      command: the command's short name, for file names and headers (default: from the
        ``__main__`` module, e.g. "pretrain").

    Returns:
      False, doing nothing, when $BERTJAX_VERBOSE is set, when it already ran, or when the
      temporary file, the terminal's descriptor or the writer cannot be had; else True.
    """
    global _state
    if _state is not None or verbose_requested():
        return False
    command = command or command_name()
    try:
        fd, temp = tempfile.mkstemp(prefix=f"bertjax-{command}-", suffix=".log")
        os.close(fd)
    except OSError:
        return False
    try:
        terminal_fd = os.dup(2)
    except OSError:  # no descriptor 2 at all: nothing to keep quiet
        os.remove(temp)
        return False
    header = _header(command)
    read, write = os.pipe()
    try:
        writer = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), temp,
             fallback_path(command), header, command],
            stdin=read, stdout=terminal_fd, stderr=subprocess.DEVNULL, close_fds=True)
    except OSError:
        for f in (read, write, terminal_fd):
            os.close(f)
        os.remove(temp)
        return False
    os.close(read)
    old = sys.stderr
    if old is not None:
        old.flush()
    terminal = os.fdopen(terminal_fd, "w", buffering=1, errors="backslashreplace",
                         encoding=getattr(old, "encoding", None) or "utf-8")
    os.dup2(write, 2)
    os.close(write)
    sys.stderr = terminal
    _state = _State(command, temp, terminal)
    _state.writer = writer  # (kept: it outlives this process, which never waits for it)
    _route_logging(old, terminal)
    if faulthandler.is_enabled():  # a fatal error's traceback is the command's to show
        faulthandler.enable(file=terminal)
    atexit.register(_finish)
    return True


def command_name() -> str:
    """The running command's short name: "pretrain" for ``python -m bertjax.pretrain``,
    "bench" for ``python -m bertjax.bench``, else the script's file name."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None:
        return os.path.splitext(os.path.basename(sys.argv[0] or "python"))[0] or "python"
    name = spec.name.removesuffix(".__main__")
    return name.removeprefix("bertjax.").replace(".", "-")


def is_bertjax(record: logging.LogRecord) -> bool:
    """Whether a log record comes from bertjax itself (its logger's name, or the file that
    logged it, also for records logged through absl or the root logger)."""
    if record.name == "bertjax" or record.name.startswith("bertjax."):
        return True
    path = record.pathname
    return bool(path) and os.path.abspath(path).startswith(_PACKAGE + os.sep)


class _Route(logging.Filter):
    """Lets through bertjax's records (``ours``) or everyone else's."""

    def __init__(self, ours: bool):
        super().__init__()
        self.ours = ours

    def filter(self, record: logging.LogRecord) -> bool:
        return is_bertjax(record) == self.ours


def _route_logging(old: TextIO | None, terminal: TextIO) -> None:
    """The root logger's handlers write bertjax's records to the terminal; one more handler
    writes the other libraries' records (and Python warnings) to descriptor 2, the log."""
    root = logging.getLogger()
    if not root.handlers:  # not under absl: Python's last-resort handler would print ours
        root.addHandler(logging.StreamHandler(terminal))
    for handler in root.handlers:
        # absl's handler wraps a stream handler holding the stderr object of its import
        for h in (handler, getattr(handler, "python_handler", None)):
            if isinstance(h, logging.StreamHandler) and h.stream is not None and (
                    h.stream is old or h.stream is sys.__stderr__):
                h.setStream(terminal)
        handler.addFilter(_Route(ours=True))
    log = open(2, "w", buffering=1, closefd=False, encoding="utf-8", errors="backslashreplace")
    to_log = logging.StreamHandler(log)
    to_log.setFormatter(logging.Formatter(
        "%(levelname).1s%(asctime)s %(process)d %(name)s %(filename)s:%(lineno)d] %(message)s"))
    to_log.addFilter(_Route(ours=False))
    root.addHandler(to_log)
    logging.captureWarnings(True)


def _header(command: str) -> str:
    when = datetime.datetime.now().isoformat(timespec="seconds")
    args = " ".join(sys.argv[1:]).replace("\t", " ").replace("\n", " ")
    return (f"==> {when} bertjax {command} {args} (process {os.getpid()} on "
            f"{socket.gethostname()})")


def _tell(*fields: str) -> None:
    """A control line to the writer, in order with everything written to descriptor 2."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    line = "\t".join(f.replace("\t", " ").replace("\n", " ") for f in fields)
    try:
        os.write(2, _MARK + line.encode() + b"\n")
    except OSError:  # the writer is gone: there is nobody to tell
        pass


def log_to(directory: str, later: bool = False) -> str | None:
    """The run has started in ``directory``: the log becomes DIRECTORY/logs/console.log now
    (the first directory of a command wins: a suite's tasks log into the suite's). With
    ``later``, only when the command ends (not after a refusal), if ``directory`` exists then.

    Nothing happens unless ``quiet`` ran in this process, or for a URL (gs://...): such a
    log is kept as if the command had no directory.

    Returns:
      The log file, when it is settled now; else None.
    """
    s = _state
    if not active() or s.path or not directory or "://" in os.fspath(directory):
        return None
    directory = os.path.abspath(os.fspath(directory))
    if later:
        if not s.later:
            s.later = directory
            _tell("later", directory)
        return None
    s.path = os.path.join(directory, LOG_FILE)
    _tell("move", s.path)
    return s.path


def refused() -> None:
    """The command stops for bad input (exit status 2): a log not yet in a directory is
    removed when it ends, and none is created."""
    if active():
        _state.outcome = "refused"


def crashed() -> None:
    """The command ends with an unexpected exception: its last line names the log."""
    if active():
        _state.outcome = "crashed"


def fallback_path(command: str) -> str:
    """The log of a command that ran without a directory of its own."""
    root = os.environ.get("BERTJAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                        "bertjax"))
    return os.path.join(root, "logs", f"{command}.log")


def _finish() -> None:
    """At exit: tells the writer how the command ended and where the log goes (it places it
    when the last holder of descriptor 2, child processes included, has closed it); after a
    crash, names the log on the terminal."""
    s = _state
    if not active():
        return
    target = s.path or (os.path.join(s.later, LOG_FILE) if s.later and os.path.isdir(s.later)
                        else fallback_path(s.command))
    _tell("end", s.outcome, target)
    if s.outcome == "crashed":
        print(f"the libraries' log of this run: {target}", file=s.terminal, flush=True)
    s.terminal.flush()


# ------------------------------------------------------------------- the writer process


class _Writer:
    """The other end of descriptor 2: appends every byte to the log file, moves the log into
    the run's directory when told, and places it (or removes it) at the end."""

    def __init__(self, temp: str, fallback: str, header: str, command: str):
        self.temp, self.fallback, self.command = temp, fallback, command
        self.header = header.encode() + b"\n"
        self.path, self.later, self.outcome, self.target = temp, "", None, ""
        self.out = open(temp, "ab", buffering=0)
        self.tail: collections.deque = collections.deque(maxlen=_TAIL_LINES)

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.tail.append(data)

    def move(self, path: str) -> None:
        """Continues the log in ``path`` (appending; the header first), with what the
        temporary file holds; nothing changes when ``path`` cannot be written."""
        if self.path != self.temp:
            return
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            out = open(path, "ab", buffering=0)
        except OSError:
            return
        out.write(self.header)
        with open(self.temp, "rb") as temp:
            while chunk := temp.read(1 << 20):
                out.write(chunk)
        self.out.close()
        os.remove(self.temp)
        self.out, self.path = out, path

    def control(self, line: bytes) -> None:
        fields = line.rstrip(b"\n").decode("utf-8", "replace").split("\t")
        if fields[0] == "move" and len(fields) > 1:
            self.move(fields[1])
        elif fields[0] == "later" and len(fields) > 1:
            self.later = fields[1]
        elif fields[0] == "end" and len(fields) > 2:
            self.outcome, self.target = fields[1], fields[2]

    def close(self) -> None:
        """Everyone has closed descriptor 2: places the log (where the command said at its
        end, else as it would have) and, when the command ended without finishing, says so
        with the log's last lines."""
        if self.path == self.temp:
            empty = os.path.getsize(self.temp) == 0
            if self.outcome == "refused" or (self.outcome == "ended" and empty
                                             and self.target == self.fallback):
                self.out.close()
                os.remove(self.temp)
                return
            target = self.target or (os.path.join(self.later, LOG_FILE)
                                     if self.later and os.path.isdir(self.later)
                                     else self.fallback)
            if target == self.fallback:
                try:
                    if os.path.getsize(self.fallback) > _FALLBACK_KEEP:
                        os.replace(self.fallback, self.fallback + ".1")
                except OSError:
                    pass
            self.move(target)
        self.out.close()
        if self.outcome is None:
            tail = b"".join(self.tail).decode("utf-8", "replace")
            _say(f"bertjax {self.command}: the process ended without finishing (killed, or "
                 f"stopped by a library's fatal error); the libraries' log: {self.path}, "
                 f"its last lines:\n{tail}" + ("" if tail.endswith("\n") else "\n"))


def _say(text: str) -> None:
    try:
        os.write(1, text.encode("utf-8", "replace"))
    except OSError:  # no terminal any more
        pass


def _write_log(argv: list[str]) -> None:
    """The writer process: ``console.py TEMP FALLBACK HEADER COMMAND``, descriptor 2 of the
    command on stdin, the command's terminal on stdout."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the command decides; the
        signal.signal(sig, signal.SIG_IGN)  # log is written until its last line
    writer = _Writer(*argv[:4])
    for line in sys.stdin.buffer:
        data, mark, rest = line.partition(_MARK)
        if data:
            writer.write(data)
        if mark:
            writer.control(rest)
    writer.close()


if __name__ == "__main__":
    _write_log(sys.argv[1:])
