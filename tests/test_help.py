"""Every command explains itself: ``--help`` exits 0 and names the command's own flags and its
config's keys, ``--print_config`` prints every key with its value and meaning, a misspelled
``--config.key`` names the nearest real keys, shipped configs are found by name from any
directory, and the ``bertjax`` console command runs each of them.

The expected flags are read from each command's source (its ``DEFINE_*`` calls and the shared
``cli.define_*`` helpers it calls), not from the help renderer.
"""

import ast
import glob
import importlib.util
import os
import subprocess
import sys
import tomllib

import pytest

from bertjax import __main__ as dispatcher
from bertjax import config as config_lib
from bertjax import helptext
from bertjax.finetuning import defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = {"define_config_file": ["config", "print_config"],
          "define_config": ["config", "print_config"],
          "define_cluster_flags": ["coordinator_address", "num_processes", "process_id"],
          "define_debug_flag": ["debug"]}


def _run(args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def _source_flags(module: str) -> list[str]:
    spec = importlib.util.find_spec(module)
    path = spec.origin if not spec.submodule_search_locations else os.path.join(
        spec.submodule_search_locations[0], "__main__.py")
    names = []
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr = node.func.attr
            if attr.startswith("DEFINE_") and node.args and isinstance(node.args[0],
                                                                         ast.Constant):
                names.append(node.args[0].value)
            names += SHARED.get(attr, [])
    return sorted(set(names))


@pytest.mark.parametrize("command", sorted(dispatcher.COMMANDS))
def test_help_exits_zero_and_names_every_flag(command):
    expected = _source_flags(dispatcher.COMMANDS[command][0])
    assert len(expected) >= 3, expected  # the source scan found the command's flags
    r = _run(["-m", "bertjax", command, "--help"])
    assert r.returncode == 0, r.stderr[-2000:]
    for name in expected:
        assert f"--{name}=" in r.stdout or f"--[no]{name}" in r.stdout, (name, r.stdout)
    assert f"usage: bertjax {command}" in r.stdout
    if "config" in expected:  # the config's top-level keys, plain and grouped
        assert "config keys of" in r.stdout and "  seed = " in r.stdout
        assert "optim.{" in r.stdout and "model.{" in r.stdout


def test_short_and_full_help_exit_zero():
    short = _run(["-m", "bertjax.pretrain", "-h"])
    full = _run(["-m", "bertjax.pretrain", "--helpfull"])
    assert short.returncode == full.returncode == 0
    assert "--workdir=" in short.stdout and "--verbosity" not in short.stdout
    assert "--workdir=" in full.stdout and "--verbosity" in full.stdout  # absl's own flags
    assert "usage: python -m bertjax.pretrain" in short.stdout


def test_console_command_lists_and_refuses():
    r = _run(["-m", "bertjax", "--help"])
    assert r.returncode == 0
    for name in dispatcher.COMMANDS:
        assert f"\n  {name} " in r.stdout
    bad = _run(["-m", "bertjax", "pretrian"])
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("error: no command 'pretrian'")


def test_print_config_shows_every_key_with_overrides_and_meanings(tmp_path):
    r = _run(["-m", "bertjax.finetune", "--config=ner", "--config.optim.lr=0.25",
              "--config.data.scheme=IOBES", "--print_config"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {line.split(" = ")[0].strip(): line for line in r.stdout.splitlines()}
    config = helptext.load_config("ner")
    assert set(rows) == set(helptext.flatten(config))
    assert "= 0.25 " in rows["optim.lr"] and "'IOBES'" in rows["data.scheme"]
    assert "NER tags" in rows["data.scheme"]  # the fine-tuning meaning
    assert "peak learning rate" in rows["optim.lr"]
    assert not os.listdir(tmp_path)  # printing wrote nothing


def _shipped():
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
        name = os.path.basename(path)[:-3]
        yield name, helptext.load_config(name)


def test_every_config_key_has_a_meaning_and_no_meaning_is_stale():
    seen = set()
    for name, config in _shipped():
        assert config is not None, name
        text = helptext.meanings(config)
        for key in helptext.flatten(config):
            assert text.get(key, "").strip(), f"{name}: config key {key} has no meaning"
            seen.add(key)
    stale = (set(config_lib.MEANINGS) | set(defaults.MEANINGS)) - seen
    assert not stale, stale


def test_nearest_keys():
    config = helptext.load_config("bert_tiny")
    assert helptext.nearest_keys(config, "lr")[0] == "optim.lr"
    assert helptext.nearest_keys(config, "model.hiden_size")[0] == "model.hidden_size"
    assert helptext.nearest_keys(config, "data.wholeword")[0] == "data.whole_word"
    assert helptext.nearest_keys(config, "zzzzzz") == []


def test_shipped_configs_by_name_from_any_directory(tmp_path):
    for value in ("bert_mini", "bert_mini.py", "configs/bert_mini.py"):
        r = _run(["-m", "bertjax.pretrain", f"--config={value}", "--print_config"],
                 cwd=tmp_path)
        assert r.returncode == 0, (value, r.stderr[-1000:])
        assert "'mini'" in r.stdout  # model.preset of bert_mini
    # a file that exists is taken as it is, before any shipped config of that name
    os.makedirs(tmp_path / "configs")
    (tmp_path / "configs" / "bert_mini.py").write_text(
        "from bertjax.config import base_config\n\ndef get_config():\n"
        "    c = base_config()\n    c.seed = 4242\n    return c\n")
    r = _run(["-m", "bertjax.pretrain", "--config=configs/bert_mini.py", "--print_config"],
             cwd=tmp_path)
    assert r.returncode == 0 and "4242" in r.stdout
    bad = _run(["-m", "bertjax.pretrain", "--config=bert_mega"], cwd=tmp_path)
    assert bad.returncode == 2 and "shipped config: bert_base" in bad.stderr


def test_pyproject_lists_every_package_and_extra_file():
    project = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))
    setuptools = project["tool"]["setuptools"]
    on_disk = {os.path.relpath(os.path.dirname(p), ROOT).replace(os.sep, ".")
               for p in glob.glob(os.path.join(ROOT, "bertjax", "**", "__init__.py"),
                                  recursive=True)}
    assert set(setuptools["packages"]) == on_disk | {"bertjax.configs"}
    assert setuptools["package-dir"]["bertjax.configs"] == "configs"
    dynamic = setuptools["dynamic"]
    files = dynamic["dependencies"]["file"] + [
        f for extra in dynamic["optional-dependencies"].values() for f in extra["file"]]
    for name in files:
        assert os.path.isfile(os.path.join(ROOT, name)), name
    assert project["project"]["scripts"]["bertjax"] == "bertjax.__main__:main"
