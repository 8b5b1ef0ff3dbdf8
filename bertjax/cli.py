"""Shared command-line plumbing: every command (pretrain, finetune, glue, embed, prepare,
convert) starts the same way, and every input mistake ends it with one line.

The shape of a command module::

    # module docstring: what it does and its usage (absl prints it on a usage error)
    _CONFIG = cli.define_config_file("x.py", "...")  # the shared flags first: --config where
    _START_CLUSTER = cli.define_cluster_flags()      # it takes one, cluster flags where it runs
    _DEBUG = cli.define_debug_flag()                 # in several processes, --debug always
    _WORKDIR = flags.DEFINE_string(...)              # then the command's own

    def main(argv):
        cli.start(argv)                # stray arguments are a usage error; libraries' lines to a log
        from bertjax import library    # after flag parsing: jax starts here
        with cli.input_errors(_DEBUG.value, library.SomeError):
            _START_CLUSTER()           # multi-process commands
            library.run(cli.config_value(_CONFIG), _WORKDIR.value)

    if __name__ == "__main__":
        cli.run(main)

absl's default parser lets a misspelled ``--config.key`` escape as a traceback; ``parse_flags``
catches it and prints ``error: ...`` naming the flag, what was expected and how to fix it, and
``input_errors`` does the same for config, data and cluster errors raised while running.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Callable, Iterator

from absl import app, flags, logging

from bertjax import console
from bertjax import helptext


def _unknown_key(argv: list[str], message: str) -> str:
    """The one line for a --config.KEY override naming no key: the argument, and the real keys
    nearest to it (config_dict's own hint looks only among the last group's keys)."""
    value = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")),
                 _CONFIG_DEFAULTS.get("config", ""))
    config = helptext.load_config(value)
    keys = helptext.flatten(config) if config is not None else {}
    for arg in argv[1:]:
        name = arg.split("=", 1)[0]
        if name.startswith("--config.") and name[len("--config."):] not in keys:
            wrong = name[len("--config."):]
            near = helptext.nearest_keys(config, wrong) if config is not None else []
            fix = (f"nearest: {', '.join('--config.' + k for k in near)}" if near
                   else "no key is near it")
            return f"{name}: no such config key; {fix} (--print_config lists every key)"
    m = re.search(r"'([A-Za-z_0-9]+)'", message)
    return (f"--config.{m.group(1) if m else '?'}: no such config key (--print_config lists "
            "every key)")


def fail(message: str, code: int = 2) -> None:
    """Prints one line to stderr and exits non-zero."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flags_parser: like the default, with one-line errors for bad config overrides;
    ``--help`` (``-h``, ``--helpshort``, ``--helpfull``) prints the command's flags and its
    config's keys and exits 0; ``--print_config`` prints every config key and exits 0."""
    wanted = [a for a in argv[1:] if a in helptext.HELP_ARGS]
    if wanted:
        rest = [a for a in argv if a not in helptext.HELP_ARGS]
        try:
            flags.FLAGS(rest, known_only=True)  # --config=... as given, for its keys
        except Exception:  # help is shown whatever else is wrong on the line
            pass
        _print_and_exit(helptext.render(argv, full="--helpfull" in wanted))
    rest = _guard(lambda: flags.FLAGS(argv), argv)
    if "print_config" in flags.FLAGS and flags.FLAGS.print_config:
        _print_and_exit(helptext.format_config(config_value(flags.FLAGS["config"])))
    return rest


def _print_and_exit(text: str) -> None:
    """Prints help-like output and exits 0 (quietly also when a pager or `head` stops
    reading)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


def define_config(default: str, name: str = "config", **kwargs):
    """config_flags.DEFINE_config_file, whose overrides are parsed at definition time: a bad
    override is reported in one line instead of a traceback at import. A shipped config may be
    named without its path (``--config=bert_tiny``, see helptext.resolve_config); defines
    ``--print_config`` too."""
    from ml_collections import config_flags
    helptext.resolve_config_args(sys.argv, name)
    _CONFIG_DEFAULTS[name] = default
    flags.DEFINE_bool("print_config", False, "Print every key of the config (after the "
                      "--config.KEY=VALUE overrides) with its value and meaning, then exit.")
    return _guard(lambda: config_flags.DEFINE_config_file(name, default, **kwargs), sys.argv)


_CONFIG_DEFAULTS: dict[str, str] = {}  # config flag name -> its default file (typo messages)


def define_config_file(file_name: str, help_string: str):
    """A command's --config flag: a config file, by default the shipped ``<file_name>``
    (bertjax/configs installed, configs/ of a checkout), locked (an override may only set a
    key the file has)."""
    default = os.path.join(helptext.configs_dir(), file_name)
    return define_config(default, help_string=help_string, lock_config=True)


def _guard(fn, argv: list[str]):
    try:
        return fn()
    except flags.Error as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        text = lines[0] if len(lines) == 1 else f"{lines[0].split(':')[0]}: {lines[-1]}"
        fail(f"{text}; run with --helpfull to list flags")
    except AttributeError as e:  # config_dict: unknown key
        fail(_unknown_key(argv, str(e)))
    except (ValueError, TypeError, KeyError) as e:
        fail(f"bad config: {e}")


def config_value(holder) -> object:
    """The loaded config of a config flag; a missing or broken config file is one line."""
    try:
        value = holder.value
        value.get("seed")  # config files load lazily: force it here
        return value
    except OSError as e:
        try:
            from ml_collections import config_flags
            path = config_flags.get_config_filename(flags.FLAGS[holder.name])
        except Exception:
            path = "?"
        why = "no such file" if not os.path.exists(path.split(":")[0]) else type(e).__name__
        fail(f"--config={path}: cannot load that config file ({why}); expected a path to a "
             "file that defines get_config, or a shipped config: "
             f"{', '.join(helptext.shipped_configs())}")
    except (AttributeError, KeyError, ValueError, TypeError) as e:
        fail(f"--config: {e}")


def define_cluster_flags() -> Callable[..., None]:
    """Defines --coordinator_address, --num_processes and --process_id (multi-process runs;
    auto-detected when left out) and returns a function that starts the distributed runtime
    with their values: ``multihost.initialize``, to which its keyword arguments (``timeout_s``)
    are passed on. Call it inside ``input_errors``: a cluster that cannot start is one line."""
    coord = flags.DEFINE_string("coordinator_address", None,
                                "host:port of process 0 (multi-process runs; else auto-detected).")
    nproc = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
    proc_id = flags.DEFINE_integer("process_id", None, "This process's index.")

    def initialize(**kwargs) -> None:
        from bertjax import multihost  # here: importing it starts JAX
        multihost.initialize(coord.value, nproc.value, proc_id.value, **kwargs)

    return initialize


def define_debug_flag():
    """Defines --debug: let the tracebacks of input errors through (see ``input_errors``)."""
    return flags.DEFINE_bool("debug", False, "Show full tracebacks for input errors.")


def start(argv: list[str], hint: str = "use --config.key=value") -> None:
    """The first lines of a command's main: stray arguments are a usage error (``hint`` says
    what to write instead), and the console is kept quiet before JAX or TensorFlow start: the
    libraries' lines go to a log file, the command's own stay on the terminal (bertjax.console
    says where the log goes; ``BERTJAX_VERBOSE=1`` or an explicit ``--verbosity`` shows
    everything on the terminal instead)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; {hint}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not flags.FLAGS["verbosity"].present:
        console.quiet()


# The input errors of the library: (module, class). Only modules already imported are looked at:
# one that is not loaded cannot have raised, and importing bertjax.config or bertjax.multihost
# would start JAX in a command that never needs it (prepare).
_INPUT_ERRORS = (("bertjax.config", "ConfigError"), ("bertjax.data.errors", "DataError"),
                 ("bertjax.multihost", "ClusterError"),
                 ("bertjax.train", "NonFiniteError"),  # a run of skipped steps, in any loop
                 ("bertjax.lock", "Busy"))  # another process writes the same workdir


@contextlib.contextmanager
def input_errors(debug: bool, *more: type[BaseException]) -> Iterator[None]:
    """Inside: a config, data or cluster error, a training stopped by non-finite steps (or one
    of ``more``) ends the program with one ``error:`` line and exit 2; ``debug`` lets the
    traceback through instead."""
    try:
        yield
    except BaseException as e:
        known = tuple(getattr(sys.modules[module], name) for module, name in _INPUT_ERRORS
                      if module in sys.modules)
        if debug or not isinstance(e, known + more):
            raise
        fail(str(e))


def run(main: Callable[[list[str]], None], verbosity: int = logging.WARNING) -> None:
    """Runs a command's ``main`` under absl with ``parse_flags`` (one-line flag errors). Logs
    show from WARNING up (orbax and jax are chatty at INFO; ``--verbosity=0`` shows them).

    A loop that stopped on request after saving (multihost.Stopped: SIGTERM, a first Ctrl-C)
    ends with its one line and exit code (0, or 130 after Ctrl-C); a second Ctrl-C, or one
    outside a training loop, stops at once with one line and exit 130. A refused input (exit
    2) keeps no console log; after a crash the last line names it (bertjax.console)."""
    logging.set_verbosity(verbosity)

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except KeyboardInterrupt:
            print("interrupted: stopped at once; a workdir keeps its last complete checkpoint",
                  file=sys.stderr, flush=True)
            sys.exit(130)
        except SystemExit as e:
            if e.code == 2:  # fail(): bad input
                console.refused()
            raise
        except BaseException as e:
            multihost = sys.modules.get("bertjax.multihost")  # loaded once a loop ran
            if multihost is None or not isinstance(e, multihost.Stopped):
                console.crashed()
                raise
            print(str(e), file=sys.stderr, flush=True)
            sys.exit(e.exit_code)

    app.run(guarded, flags_parser=parse_flags)
