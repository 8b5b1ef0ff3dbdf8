"""Corpus-format text: validation, byte-range splits, documents, and a simple sentence splitter.

The format is google-research/bert's: one sentence (or paragraph) per line, a blank line between
documents. Large inputs are split by byte ranges over the concatenation of all input files, so
every preparation task reads only its own part: a task owns the documents whose first line starts
inside its range (the Hadoop text-split rule). Ranges are disjoint and cover all bytes, hence every
document is owned by exactly one task, however the files and ranges fall.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Iterator, Sequence

from bertjax.data.errors import DataError

# Bytes examined to decide whether a file is text: enough to catch binaries, cheap on huge files.
_SNIFF_BYTES = 1 << 20

# Words ending in "." that rarely end a sentence in English technical prose.
_ABBREVIATIONS = frozenset(
    "e.g i.e etc vs cf mr mrs ms dr st no fig al approx resp sec eq ch vol pp ca".split())
_BOUNDARY = re.compile(r"[.!?][\"')\]]*\s+")


@dataclasses.dataclass(frozen=True)
class ByteRange:
    """Part of one input file: the documents whose first line starts in [start, end)."""
    path: str
    start: int
    end: int


def check_text_file(path: str) -> int:
    """Raises DataError unless `path` is a non-empty UTF-8 text file; returns its size in bytes.

    Args:
      path: file to check.

    Returns:
      The file size in bytes.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if not head.strip():
        raise DataError(f"input file {path} is empty (expected text in corpus format: one sentence "
                        "per line, blank line between documents); remove it or fix the glob")
    if b"\x00" in head:
        raise DataError(f"input file {path} looks binary (it contains NUL bytes; expected UTF-8 "
                        "text in corpus format); remove it from the input glob")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        # A full sniffed block may end inside a multi-byte character; that alone is fine.
        if len(head) == _SNIFF_BYTES and e.reason == "unexpected end of data":
            return size
        raise DataError(f"input file {path} is not UTF-8 text (byte {e.start}: {e.reason}); "
                        "convert it with iconv or remove it from the input glob") from None
    return size


def plan_splits(files: Sequence[str], sizes: Sequence[int],
                num_splits: int) -> list[list[ByteRange]]:
    """Divides the concatenated input into `num_splits` nearly equal byte ranges.

    Args:
      files: input files, in a fixed (sorted) order.
      sizes: their sizes in bytes.
      num_splits: number of ranges (one per output shard).

    Returns:
      For each split, the list of file pieces it covers (one split may span several files; a split
      can be empty of documents when one document is larger than a split).
    """
    total = sum(sizes)
    bounds = [total * k // num_splits for k in range(num_splits + 1)]
    splits: list[list[ByteRange]] = []
    for k in range(num_splits):
        lo, hi = bounds[k], bounds[k + 1]
        pieces, offset = [], 0
        for path, size in zip(files, sizes):
            a, b = max(lo, offset), min(hi, offset + size)
            if a < b:
                pieces.append(ByteRange(path, a - offset, b - offset))
            offset += size
        splits.append(pieces)
    return splits


def _previous_line_is_blank(f, pos: int) -> bool:
    """Whether the line that ends just before line-start `pos` is blank (True at file start)."""
    cur = pos - 1  # byte pos-1 is the newline that ends the previous line
    while cur > 0:
        lo = max(0, cur - 4096)
        f.seek(lo)
        chunk = f.read(cur - lo)
        for byte in reversed(chunk):
            if byte == 0x0A:
                return True
            if not chr(byte).isspace():
                return False
        cur = lo
    return True


def read_documents(piece: ByteRange) -> Iterator[list[str]]:
    """Yields the documents owned by `piece`, each a list of stripped non-empty lines.

    Args:
      piece: a file and a byte range; the documents whose first line starts in it are yielded,
        read to their end even past the range.

    Returns:
      An iterator of documents.
    """
    with open(piece.path, "rb") as f:
        pos, prev_blank = 0, True
        if piece.start > 0:
            f.seek(piece.start - 1)
            f.readline()  # the line holding byte start-1 belongs to the previous range
            pos = f.tell()
            prev_blank = _previous_line_is_blank(f, pos)
            f.seek(pos)
        doc: list[str] = []
        while True:
            line_start = pos
            raw = f.readline()
            if not raw:
                break
            pos += len(raw)
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                if doc:
                    yield doc
                    doc = []
                prev_blank = True
                continue
            if prev_blank:  # a document starts on this line
                if line_start >= piece.end:
                    return
                doc = [line]
            elif doc:
                doc.append(line)
            # else: the tail of a document that an earlier range owns.
            prev_blank = False
        if doc:
            yield doc


def split_sentences(paragraph: str) -> list[str]:
    """Splits a paragraph after '.', '!' or '?' followed by space and a capital, digit or quote.

    Args:
      paragraph: one line of text.

    Returns:
      Its sentences (the paragraph itself when there is no boundary).
    """
    sentences, start = [], 0
    for m in _BOUNDARY.finditer(paragraph):
        nxt = paragraph[m.end():m.end() + 1]
        if not nxt or not (nxt.isupper() or nxt.isdigit() or nxt in "\"'(["):
            continue
        words = paragraph[start:m.start()].split()
        last = words[-1].lower().lstrip("(\"'") if words else ""
        if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
            continue  # "e.g. X", "J. Smith": not a boundary
        sentences.append(paragraph[start:m.end()].strip())
        start = m.end()
    tail = paragraph[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def document_sentences(lines: Sequence[str]) -> list[str]:
    """The sentences of a document given as lines (each line may hold several sentences).

    Args:
      lines: a document's non-empty lines.

    Returns:
      Its sentences in order.
    """
    return [s for line in lines for s in split_sentences(line)]


def expand_inputs(pattern: str) -> list[str]:
    """Expands a comma-separated list of globs into a sorted list of files.

    Args:
      pattern: e.g. "data/wiki_*.txt,data/books/*.txt".

    Returns:
      Sorted unique file paths.
    """
    files = set()
    for part in filter(None, (p.strip() for p in pattern.split(","))):
        matches = [m for m in glob.glob(part, recursive=True) if os.path.isfile(m)]
        if not matches:
            raise DataError(f"--input pattern {part!r} matches no file (expected a glob of text "
                            "files in corpus format, 'embedded', or 'tfds:NAME'); check the path "
                            "and quote the glob so the shell does not expand it")
        files.update(matches)
    if not files:
        raise DataError(f"--input {pattern!r} names no file; pass a glob of text files, 'embedded' "
                        "or 'tfds:NAME'")
    return sorted(files)
