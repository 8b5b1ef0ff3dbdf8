"""What a command says about itself: ``--help`` (its own flags, its config file and the config's
keys), ``--print_config`` (every key with its value and one-line meaning), the nearest real keys
for a misspelled ``--config.key``, and where the shipped config files are.

Config files ship inside the package (``bertjax/configs`` once installed; ``configs/`` of a
checkout), so ``--config=bert_tiny``, ``--config=bert_tiny.py`` and ``--config=configs/bert_tiny.py``
work from any directory; a path that exists is always taken as it is.
"""

from __future__ import annotations

import difflib
import os
import sys
import textwrap

from absl import flags

HELP_ARGS = ("-h", "-?", "--help", "--helpshort", "--helpfull")
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def configs_dir() -> str:
    """The shipped config files: bertjax/configs in an installed package, else the checkout's
    configs/ beside the package."""
    installed = os.path.join(_PACKAGE, "configs")
    return installed if os.path.isdir(installed) else os.path.normpath(
        os.path.join(_PACKAGE, os.pardir, "configs"))


def shipped_configs() -> list[str]:
    return sorted(name[:-3] for name in os.listdir(configs_dir())
                  if name.endswith(".py") and not name.startswith("_"))


def resolve_config(value: str) -> str:
    """A --config value with its file found: an existing path is kept; otherwise a shipped
    config by name (``bert_tiny``, ``bert_tiny.py``, ``configs/bert_tiny.py``); anything else
    is returned unchanged (loading it then fails with the project's one-line error)."""
    path, sep, arg = value.partition(":")
    if not path or os.path.exists(path):
        return value
    name = os.path.basename(path)
    name = name if name.endswith(".py") else name + ".py"
    candidate = os.path.join(configs_dir(), name)
    if os.path.dirname(path) in ("", "configs") and os.path.isfile(candidate):
        return candidate + sep + arg
    return value


def resolve_config_args(argv: list[str], name: str = "config") -> None:
    """Rewrites ``--NAME=VALUE`` / ``--NAME VALUE`` in ``argv`` (in place) to the found file."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            argv[i] = f"--{name}=" + resolve_config(arg.split("=", 1)[1])
        elif arg == f"--{name}" and i + 1 < len(argv):
            argv[i + 1] = resolve_config(argv[i + 1])


def flatten(config, prefix: str = "") -> dict[str, object]:
    """{"optim.lr": 0.001, ...} of a ConfigDict (nested dicts flattened, in key order)."""
    out: dict[str, object] = {}
    for key, value in config.items():
        if hasattr(value, "items") and not isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def meanings(config) -> dict[str, str]:
    """The one-line meaning of each key: the pre-training table, with the fine-tuning one over
    it for a fine-tuning config (one that names a task)."""
    from bertjax import config as config_lib
    out = dict(config_lib.MEANINGS)
    if "task" in config:
        from bertjax.finetuning import defaults
        out.update(defaults.MEANINGS)
    return out


def format_config(config) -> str:
    """Every key: ``key = value  meaning``, aligned, grouped as the config nests them."""
    flat, text = flatten(config), meanings(config)
    width = min(max(map(len, flat)), 34)
    lines = []
    for key, value in flat.items():
        shown = repr(value) if len(repr(value)) <= 30 else repr(value)[:27] + "..."
        lines.append(f"{key:<{width}} = {shown:<14}  {text.get(key, '')}".rstrip())
    return "\n".join(lines)


def nearest_keys(config, wrong: str, n: int = 3) -> list[str]:
    """The real keys closest to a misspelled dotted key: by the whole name, and by its last
    part anywhere in the config (``lr`` finds ``optim.lr``)."""
    keys = list(flatten(config))
    found = difflib.get_close_matches(wrong, keys, n=n, cutoff=0.6)
    last = wrong.rsplit(".", 1)[-1]
    leaves = {}
    for key in keys:
        leaves.setdefault(key.rsplit(".", 1)[-1], []).append(key)
    for leaf in difflib.get_close_matches(last, list(leaves), n=n, cutoff=0.75):
        found += [k for k in leaves[leaf] if k not in found]
    return found[:n]


def load_config(value: str):
    """The ConfigDict of a --config value, or None when it cannot be loaded."""
    import importlib.util
    path, _, arg = resolve_config(value).partition(":")
    try:
        spec = importlib.util.spec_from_file_location("bertjax_help_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config(*([arg] if arg else []))
    except Exception:  # a missing or broken config file: help prints without its keys
        return None


def _command_flags() -> list[flags.Flag]:
    """The flags the running command (and the shared cli helpers) defined: not absl's own, not
    the per-key --config.* overrides."""
    out, seen = [], set()
    for module, module_flags in flags.FLAGS.flags_by_module_dict().items():
        if "bertjax" not in module and module != sys.argv[0]:
            continue
        for flag in module_flags:
            if "." not in flag.name and flag.name not in seen:
                seen.add(flag.name)
                out.append(flag)
    return sorted(out, key=lambda f: (f.name != "config", f.name))


def _describe(flag: flags.Flag) -> str:
    if flag.name == "config":
        default = flag.default_as_str or ""
        head = "--config=FILE[:ARGS]"
        text = (f"{flag.help} A path, or a shipped config by name: "
                f"{', '.join(shipped_configs())}. Default: "
                f"{os.path.basename(default.strip(chr(39)))}.")
    else:
        kind = flag.flag_type()
        head = f"--[no]{flag.name}" if kind == "bool" else f"--{flag.name}=" + (
            {"int": "N", "float": "X"}.get(kind, "VALUE"))
        default = "" if flag.default in (None, "") else (
            f" Default: {str(flag.default).lower() if kind == 'bool' else flag.default}.")
        text = flag.help + default  # absl's help of an enum flag starts with <a|b|c>
    body = textwrap.fill(text, 96, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return f"  {head}\n{body}"


def _config_summary(config) -> list[str]:
    """The config's top-level keys: values of plain keys, the key names of nested groups."""
    lines = []
    for key, value in config.items():
        if hasattr(value, "items") and not isinstance(value, dict):
            names = [k for k, _ in value.items()]
            lines.append(textwrap.fill(f"{key}.{{{', '.join(names)}}}", 96,
                                       initial_indent="  ", subsequent_indent="      "))
        else:
            lines.append(f"  {key} = {value!r}"[:98])
    return lines


def _prog(path: str) -> str:
    """How the running command was invoked: ``bertjax NAME`` (the console command, or
    ``python -m bertjax NAME``) or ``python -m bertjax.NAME``."""
    rel = os.path.relpath(os.path.abspath(path), os.path.dirname(_PACKAGE))
    module = rel[:-3].replace(os.sep, ".").removesuffix(".__main__")
    if not module.startswith("bertjax."):
        return path or "bertjax"
    orig = list(getattr(sys, "orig_argv", []))
    via_dispatcher = any(a == "bertjax" and orig[i - 1] == "-m" for i, a in enumerate(orig)
                         if i) or (len(orig) > 1 and os.path.basename(orig[1]) == "bertjax")
    return f"bertjax {module.split('.', 1)[1]}" if via_dispatcher else f"python -m {module}"


def render(argv: list[str], full: bool = False) -> str:
    """The help text of the running command (argv: its command line, help flags included)."""
    doc = (getattr(sys.modules.get("__main__"), "__doc__", None) or "").strip()
    prog = _prog(argv[0] if argv else "")
    own = _command_flags()
    lines = [f"usage: {prog} [--flag=value ...]"
             + (" [--config.KEY=VALUE ...]" if any(f.name == "config" for f in own) else ""),
             "", doc, "", "flags:"]
    lines += [_describe(flag) for flag in own]
    if any(f.name == "config" for f in own):
        value = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")),
                     flags.FLAGS["config"].default_as_str.strip("'"))
        config = load_config(value)
        lines += ["", f"config keys of {os.path.basename(value)} (override one with "
                      "--config.KEY=VALUE; --print_config lists every key with its value and "
                      "meaning):"]
        lines += _config_summary(config) if config is not None else [
            "  (the config file could not be loaded)"]
    if full:
        lines += ["", "every flag, absl's own included:", flags.FLAGS.get_help()]
    else:
        lines += ["", "--helpfull also lists absl's own flags (logging)."]
    return "\n".join(lines)
