"""The embedded default corpus: English prose from Python's own standard library, no download.

Documents are standard-library modules: the module docstring, then the docstrings of its classes
and functions in source order. `pydoc_data.topics` (the language reference text that `help()`
shows) adds one document per topic. Files are parsed with `ast`, never imported, so building the
corpus runs no library code. Paragraphs that look like code (doctests, literal blocks, mostly
symbols) are left out, since the point is natural-language text for MLM and NSP.

The text depends only on the Python installation, so it is identical on every host of a pod that
shares an image: about 1.7 MB (510 documents, 14k paragraphs) on CPython 3.11.
"""

from __future__ import annotations

import ast
import os
import re
import sysconfig
from typing import Iterator

from bertjax.data import fs

# Directories of test suites, demos and vendored packages: code-heavy and sometimes not UTF-8.
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages",
                        "__pycache__", "lib2to3", "ensurepip", "turtledemo"})
_WHITESPACE = re.compile(r"\s+")


def _paragraphs(docstring: str) -> Iterator[str]:
    """Natural-language paragraphs of a cleaned docstring, each joined onto one line."""
    for block in re.split(r"\n\s*\n", docstring):
        lines = block.splitlines()
        if not lines or any(l.lstrip().startswith((">>>", "...", "$ ", "%")) for l in lines):
            continue  # doctests and shell sessions
        if all(l.startswith((" ", "\t")) for l in lines):
            continue  # an indented literal block (code after "::")
        text = _WHITESPACE.sub(" ", " ".join(lines)).strip()
        words = text.split()
        letters = sum(c.isalpha() or c == " " for c in text)
        if len(words) >= 4 and letters >= 0.8 * len(text):
            yield text


def _docstrings_in_order(node: ast.AST) -> Iterator[str]:
    """Docstrings of a module/class/function and of everything nested in it, in source order."""
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node, clean=True)
        if doc:
            yield doc
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _docstrings_in_order(child)


def _stdlib_files(root: str) -> Iterator[str]:
    # the Python installation this process runs: always local, so the os module reads it
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def stdlib_documents(root: str | None = None) -> Iterator[list[str]]:
    """Yields the corpus documents, each a list of paragraphs (one line each).

    Args:
      root: standard-library directory; default `sysconfig.get_paths()["stdlib"]`.

    Returns:
      An iterator of documents in a fixed order (sorted module paths, then pydoc topics).
    """
    root = root or sysconfig.get_paths()["stdlib"]
    for path in _stdlib_files(root):
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), filename=path)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are templates or in other encodings
        doc = [p for d in _docstrings_in_order(tree) for p in _paragraphs(d)]
        if len(doc) >= 2:
            yield doc
    try:
        from pydoc_data.topics import topics  # plain data: the reference manual's help topics
    except ImportError:
        return
    for name in sorted(topics):
        doc = list(_paragraphs(topics[name]))
        if len(doc) >= 2:
            yield doc


def write_embedded_corpus(path: str, max_documents: int | None = None) -> dict[str, int]:
    """Writes the embedded corpus to `path` in corpus format (a paragraph per line, blank lines
    between documents).

    Writes to a temporary name first and renames, so a reader never sees a partial file.

    Args:
      path: output text file.
      max_documents: keep only the first N documents (small corpora for tests).

    Returns:
      {"documents": ..., "paragraphs": ..., "bytes": ...}.
    """
    docs = paragraphs = 0
    with fs.atomic_write(path, "w", tmp=f"{path}.tmp-{os.getpid()}") as f:  # UTF-8
        for doc in stdlib_documents():
            if max_documents is not None and docs >= max_documents:
                break
            f.write("\n".join(doc) + "\n\n")
            docs += 1
            paragraphs += len(doc)
    return {"documents": docs, "paragraphs": paragraphs, "bytes": fs.size(path)}
