"""Corpus-format text: validation, byte-range splits, documents, and a simple sentence splitter.

The format is google-research/bert's: one sentence (or paragraph) per line, a blank line between
documents. Large inputs are split by byte ranges over the concatenation of all input files, so
every preparation task reads only its own part: a task owns the documents whose first line starts
inside its range (the Hadoop text-split rule). Ranges are disjoint and cover all bytes, hence every
document is owned by exactly one task, however the files and ranges fall.

Files are UTF-8 (a leading UTF-8 byte-order mark is skipped); `scan_text_file` checks every byte
before anything is prepared, streaming, and names the offset of the first bad one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from typing import Iterator, Sequence

from bertjax.data import fs
from bertjax.data.errors import DataError

# Block size of the streaming check: memory stays bounded however large a corpus file is.
_BLOCK_BYTES = 1 << 20
UTF8_BOM = b"\xef\xbb\xbf"  # allowed at the start of a file (some editors write it); skipped
# Byte-order marks of encodings that are not UTF-8 (UTF-32 first: its LE mark starts like
# UTF-16's).
_OTHER_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
               (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))

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


@dataclasses.dataclass(frozen=True)
class TextFile:
    """What `scan_text_file` found: the size, and documents counted up to the limit asked for."""
    size: int
    documents: int


def scan_text_file(path: str, count_documents: int = 0) -> TextFile:
    """Checks a whole file, streaming, and counts its first documents.

    Every byte is checked, not just the start: a stray Latin-1 byte deep inside a large file
    would otherwise be decoded as U+FFFD and trained on silently. One pass in fixed blocks, so
    memory does not grow with the file.

    Args:
      path: the file.
      count_documents: count documents (blank-line separated, as `read_documents` reads them)
        until this many are found; 0 counts none.

    Returns:
      Its size in bytes and the documents counted (at most `count_documents`).

    Raises:
      DataError: the file is unreadable, empty, binary (a NUL byte), in another encoding (a
        UTF-16/32 byte-order mark) or not valid UTF-8; the message names the byte offset.
    """
    opened = contextlib.ExitStack()
    try:
        size = fs.size(path)
        f = opened.enter_context(fs.path(path).open("rb"))
    except OSError as e:
        raise DataError(f"input file {path} cannot be read ({e.strerror or type(e).__name__}; "
                        "expected a readable text file); fix its permissions or remove it from "
                        "the input glob") from None
    offset, pending = 0, b""  # pending: the first bytes of a character split between blocks
    documents, in_document, line_has_text, has_text = 0, False, False, False
    with opened:
        while True:
            try:
                block = f.read(_BLOCK_BYTES)
            except OSError as e:
                raise DataError(f"input file {path} cannot be read at byte {offset} "
                                f"({e.strerror or type(e).__name__}); check the disk or copy "
                                "the file again") from None
            if offset == 0:
                for mark, encoding in _OTHER_BOMS:
                    if block.startswith(mark):
                        raise DataError(f"input file {path} is {encoding} text (it starts with a "
                                        f"{encoding} byte-order mark; expected UTF-8); convert it "
                                        f"with iconv -f {encoding} -t UTF-8")
            nul = block.find(b"\x00")
            if nul >= 0:
                raise DataError(f"input file {path} looks binary (a NUL byte at byte "
                                f"{offset + nul}; expected UTF-8 text in corpus format); remove "
                                "it from the input glob")
            data, start = pending + block, offset - len(pending)
            try:
                decoded, pending = data.decode("utf-8"), b""
            except UnicodeDecodeError as e:
                # Only a character cut by the block's end is carried over; any other error, or
                # a cut at the end of the file, is a byte that is not UTF-8.
                if not block or e.reason != "unexpected end of data":
                    raise DataError(f"input file {path} is not UTF-8 text (byte {start + e.start}:"
                                    f" {e.reason}); convert it with iconv -f <its encoding> -t "
                                    "UTF-8, or remove it from the input glob") from None
                decoded, pending = data[:e.start].decode("utf-8"), data[e.start:]
            if not block:
                break
            if offset == 0 and decoded.startswith("\ufeff"):
                decoded = decoded[1:]  # the UTF-8 BOM, which read_documents skips too
            offset += len(block)
            has_text = has_text or (bool(decoded) and not decoded.isspace())
            if documents >= count_documents:
                continue
            # Lines as read_documents sees them: split at "\n", blank when only whitespace. A
            # line may continue into the next block, so only whether it has text is carried.
            *complete, last = decoded.split("\n")
            for part in complete:
                if line_has_text or part.strip():
                    documents += not in_document
                    in_document = True
                else:
                    in_document = False
                line_has_text = False
            line_has_text = line_has_text or bool(last.strip())
    if line_has_text and not in_document:
        documents += 1  # the last line has no newline and starts a document
    if not has_text:
        raise DataError(f"input file {path} is empty (expected text in corpus format: one sentence "
                        "per line, blank line between documents); remove it or fix the glob")
    return TextFile(size, min(documents, count_documents))


def check_text_file(path: str) -> int:
    """Raises DataError unless `path` is a readable, non-empty UTF-8 text file (every byte
    checked; see `scan_text_file`); returns its size in bytes."""
    return scan_text_file(path).size


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
        if lo == 0 and chunk.startswith(UTF8_BOM):
            chunk = chunk[len(UTF8_BOM):]  # read_documents skips it: a line of only a BOM is blank
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
    with fs.path(piece.path).open("rb") as f:
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
            if line_start == 0 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]  # the mark some editors write, not text
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
        found = fs.glob(part, recursive=True)
        matches = [m for m in found if fs.is_file(m)]
        if not matches and found:  # directories (or sockets): say so, "no file" would puzzle
            raise DataError(f"--input pattern {part!r} matches only directories or other "
                            f"non-files ({sorted(found)[0]}; expected text files in corpus "
                            f"format); name the files inside, e.g. "
                            f"'{os.path.join(sorted(found)[0], '*.txt')}'")
        if not matches:
            raise DataError(f"--input pattern {part!r} matches no file (expected a glob of text "
                            "files in corpus format, 'embedded', or 'tfds:NAME'); check the path "
                            "and quote the glob so the shell does not expand it")
        files.update(matches)
    if not files:
        raise DataError(f"--input {pattern!r} names no file; pass a glob of text files, 'embedded' "
                        "or 'tfds:NAME'")
    return sorted(files)
