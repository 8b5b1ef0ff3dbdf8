"""Corpus-format text: byte-range splits own every document exactly once; sentence splitting."""

from __future__ import annotations

import random

import pytest

from bertjax.data import text
from bertjax.data.errors import DataError


def _write_corpus(path, docs, rng):
    """Writes documents with irregular separators (several blank lines, whitespace-only lines)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(rng.choice(["", "\n", "  \n"]))
        for doc in docs:
            f.write("\n".join(doc) + "\n")
            f.write(rng.choice(["\n", "\n\n", " \t\n", "\n   \n"]))


def test_splits_cover_every_document_exactly_once(tmp_path):
    rng = random.Random(0)
    files, all_docs = [], []
    for k in range(3):
        docs = [[f"doc{k}-{d} line{i} " + "x" * rng.randint(0, 300)
                 for i in range(rng.randint(1, 6))] for d in range(rng.randint(1, 40))]
        path = tmp_path / f"part{k}.txt"
        _write_corpus(path, docs, rng)
        files.append(str(path))
        all_docs += [[line.strip() for line in doc] for doc in docs]
    sizes = [text.check_text_file(f) for f in files]
    for num_splits in (1, 2, 3, 7, 16, 100, 997):
        got = [doc for split in text.plan_splits(files, sizes, num_splits) for piece in split
               for doc in text.read_documents(piece)]
        assert got == all_docs, num_splits


@pytest.mark.parametrize("paragraph, expected", [
    ("One sentence. Another one! A third? Yes.",
     ["One sentence.", "Another one!", "A third?", "Yes."]),
    ("Use e.g. Python here. Then J. Smith said (hi). Done", ["Use e.g. Python here.",
                                                            "Then J. Smith said (hi).", "Done"]),
    ("Version 3.11 is out. 42 is the answer.", ["Version 3.11 is out.", "42 is the answer."]),
    ("calls f.close() then stops", ["calls f.close() then stops"]),
])
def test_split_sentences(paragraph, expected):
    assert text.split_sentences(paragraph) == expected


def test_bad_text_files_raise_one_clear_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x00\x01\x02text")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    for path, word in ((empty, "empty"), (binary, "binary"), (latin, "UTF-8")):
        with pytest.raises(DataError, match=word) as info:
            text.check_text_file(str(path))
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DataError, match="matches no file"):
        text.expand_inputs(str(tmp_path / "nothing*.txt"))
