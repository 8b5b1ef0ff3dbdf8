"""The package layering the README's map states, checked on the source (every import, lazy ones
included): no import cycles, nothing imported from a higher layer, ``data/`` importing nothing
of the rest, and no private name of one module used by another.
"""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), os.pardir, "bertjax")

# The layer of each top-level module or package; a module may import its own layer or below.
LAYERS = {
    "data": 0,
    **dict.fromkeys(("sharding", "multihost", "losses", "optim", "synthetic", "report", "model",
                     "config", "lock", "console", "progress"), 1),
    **dict.fromkeys(("train", "checkpoint", "rundir", "params_io"), 2),
    **dict.fromkeys(("inputs", "loop", "finetuning", "interop", "bench"), 3),
    **dict.fromkeys(("cli", "helptext", "pretrain", "finetune", "glue", "embed", "prepare",
                     "convert", "api", "__main__", "plan"), 4),
}
# Imports across layer-3 groups that are part of the design: the pre-training loop reads its
# inputs, and reports model FLOP/s and MFU with the benchmark's one FLOP formula and peaks
# (bench/flops.py); the benchmark compares against transformers through the HF parameter
# mapping; the HF export of a fine-tuning reads its family and labels as fine-tuning does.
ACROSS = {("loop", "inputs"), ("loop", "bench"), ("bench", "interop"), ("interop", "finetuning")}


def _modules() -> dict[str, str]:
    found = {}
    for dirpath, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                module = "bertjax" + ("" if rel == "__init__" else "." + rel.removesuffix(
                    ".__init__"))
                found[module] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str:
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(path: str) -> tuple[set[str], dict[str, str]]:
    """(bertjax modules imported, local alias -> module)."""
    edges, aliases = set(), {}
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("bertjax"):
                    edges.add(_resolve(a.name))
                    if a.asname:
                        aliases[a.asname] = _resolve(a.name)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bertjax"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                target = _resolve(full) if full in MODULES else _resolve(node.module)
                edges.add(target)
                if full in MODULES:
                    aliases[a.asname or a.name] = full
    return edges, aliases


GRAPH = {m: _imports(p) for m, p in MODULES.items()}


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer():
    missing = sorted({_group(m) for m in MODULES if _group(m) and _group(m) not in LAYERS})
    assert not missing, f"add {missing} to LAYERS (and to the README's map)"


def test_no_import_cycles():
    graph = {m: {t for t in GRAPH[m][0] if t != m and t != "bertjax"} for m in MODULES}
    state: dict[str, int] = {}

    def visit(m, trail):
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(t):] + [t]))
            if t not in state:
                visit(t, trail + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def _layer(module: str) -> int:
    """A package's ``__main__`` is a command (layer 4) like the top-level entry points."""
    return 4 if module.endswith(".__main__") else LAYERS[_group(module)]


def test_imports_go_down_the_layers():
    wrong = []
    for module in sorted(m for m in MODULES if _group(m)):
        group = _group(module)
        for target in sorted(GRAPH[module][0]):
            other = _group(target)
            if not other or other == group:
                continue
            if group == "data":
                wrong.append(f"{module} imports {target}: data/ imports nothing of the rest")
            elif LAYERS[other] > _layer(module):
                wrong.append(f"{module} imports {target} from a higher layer")
            elif LAYERS[other] == _layer(module) == 3 and (group, other) not in ACROSS:
                wrong.append(f"{module} imports {target} across packages")
    assert not wrong, wrong


def test_no_private_name_of_another_module_is_used():
    used = []
    for module, path in MODULES.items():
        aliases = GRAPH[module][1]
        for node in ast.walk(ast.parse(open(path).read())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                used.append(f"{module}: {aliases[node.value.id]}.{node.attr}")
    assert not used, used
