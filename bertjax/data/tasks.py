"""Readers for downstream-task data: GLUE TSVs, CSV/JSONL tables, SQuAD JSON, CoNLL, and TFDS.

Every reader returns a plain Python list of dicts (the datasets are small enough to hold, and
lists let the fine-tuning command count, shuffle and featurise them however it likes):

  sentence (pair) tasks  {"guid": str, "text_a": str, "text_b": str | None,
                          "label": int (class id) | float (regression) | None (unlabelled)}
  SQuAD                  {"id", "title", "context", "question",
                          "answers": [{"text": str, "answer_start": int}], "is_impossible": bool}
  CoNLL / NER            {"guid": str, "words": [str], "tags": [str]}

Bad input raises DataError with one line naming the file, the line, the offending value and what
was expected: bytes that are not UTF-8 (by line and column), a table row with empty text, a
regression label that is not a finite number, a CoNLL token line whose column count differs
from the file's first one, a -DOCSTART- inside a sentence. Tags are returned as written
(CoNLL-2003's original files are IOB1; TFDS and most redistributions are IOB2);
bertjax.finetuning.ner scores either and converts IOB1 to IOB2.

No JAX here; TensorFlow Datasets is imported only by `tfds_examples`, which never downloads.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
from typing import Any, Iterator, Sequence

from bertjax.data import fs
from bertjax.data.errors import DataError, import_tfds
from bertjax.data.glue import GlueTask, glue_task

Example = dict[str, Any]


def read_text(path: str) -> str:
    """The whole of a UTF-8 text file (a leading byte-order mark dropped, as some GLUE/MRPC
    copies start with one); a file that is missing, unreadable or not UTF-8 is one DataError
    line naming the file and the line of the first bad byte."""
    try:
        data = fs.read_bytes(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e}); check the path and its "
                        "permissions") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column "
                        f"{column}: {e.reason}); save the file as UTF-8") from None


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end) for each line of a UTF-8 file."""
    # split only at "\n": a stray "\r" inside GLUE text must not cut a row
    lines = read_text(path).split("\n")
    if lines[-1] == "":
        lines.pop()  # the file's final newline ends the last line; it starts none
    for number, line in enumerate(lines, 1):
        yield number, line.rstrip("\r")


def _label_id(value: Any, labels: Sequence[str] | None, where: str) -> int | float:
    if labels is None:  # regression
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DataError(f"{where}: label {value!r} is not a number, as a regression task "
                            f"needs") from None
        if not math.isfinite(number):  # float() reads "nan" and "inf"; no loss can use them
            raise DataError(f"{where}: label {value!r} is not a finite number, as a regression "
                            "task needs; fix the row or remove it")
        return number
    key = value if isinstance(value, str) else json.dumps(value)
    try:
        return list(labels).index(key)
    except ValueError:
        raise DataError(f"{where}: label {key!r} is not one of the allowed labels "
                        f"{list(labels)}; fix the row or add the label to the label list") from None


# ------------------------------------------------------------------------------------- GLUE


def read_glue(path: str, task: str | GlueTask) -> list[Example]:
    """Reads one GLUE TSV (train, dev or test) of `task`.

    The files are tab-separated without quoting (quotes are part of the text), with a header
    line, except CoLA's train/dev files. Columns are found by header name, so the test files
    (other column layout, no label column) read with the same code and get label None.

    Args:
      path: the .tsv file.
      task: GLUE task name or GlueTask (see bertjax.data.glue.GLUE_TASKS).

    Returns:
      [{"guid", "text_a", "text_b", "label"}]; guid is the file's index/id column if present,
      else "<file>:<line>".
    """
    spec = glue_task(task) if isinstance(task, str) else task
    name = os.path.basename(path)
    examples: list[Example] = []
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise DataError(f"{path}: empty file; expected a GLUE {spec.name} TSV")
    fields = first[1].split("\t")
    if spec.headerless_columns and spec.text_a not in fields:
        header, pending = list(spec.headerless_columns), [first]  # CoLA train/dev: no header
    else:
        header, pending = fields, []
    column = {n: i for i, n in enumerate(header)}
    wanted = [spec.text_a] + ([spec.text_b] if spec.text_b else [])
    for n in wanted:
        if n not in column:
            raise DataError(f"{path}: column {n!r} not found; columns present: {header}. Is "
                            f"this a GLUE {spec.name} file?")
    label_at = column.get(spec.label_column)  # absent in test files
    id_at = column.get("index", column.get("id"))
    needed = max(column[n] for n in wanted + ([spec.label_column] if label_at is not None
                                                else [])) + 1

    def rows():
        yield from pending
        yield from lines

    for number, line in rows():
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) < needed:
            if spec.skip_short_rows:
                continue
            raise DataError(f"{path}:{number}: {len(fields)} tab-separated fields, expected "
                            f"at least {needed} (header: {header})")
        examples.append({
            "guid": fields[id_at] if id_at is not None else f"{name}:{number}",
            "text_a": fields[column[spec.text_a]],
            "text_b": fields[column[spec.text_b]] if spec.text_b else None,
            "label": (None if label_at is None else
                      _label_id(fields[label_at], spec.labels, f"{path}:{number}")),
        })
    return examples


# ------------------------------------------------------------------------------ CSV / JSONL


def read_table(path: str, text_a: str, text_b: str | None = None, label: str | None = None,
               labels: Sequence[str] | None = None, regression: bool = False,
               file_format: str | None = None) -> list[Example]:
    """Reads a user CSV / TSV / JSON-lines file of sentences or sentence pairs.

    Args:
      path: the file; its format comes from the extension (.csv, .tsv, .jsonl/.json) unless
        `file_format` is given. CSV uses standard quoting and a header line; TSV is split at
        tabs without quoting (GLUE style) with a header line; JSONL is one object per line.
      text_a: name of the first text column.
      text_b: name of the second text column, for sentence pairs.
      label: name of the label column; None for unlabelled (prediction) data.
      labels: the allowed label values in class-id order (required for classification).
      regression: labels are numbers, not classes.
      file_format: "csv", "tsv" or "jsonl" to override the extension.

    Returns:
      [{"guid", "text_a", "text_b", "label"}], guid "<file>:<line>".
    """
    fmt = file_format or {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl",
                          ".json": "jsonl"}.get(os.path.splitext(path)[1].lower())
    if fmt not in ("csv", "tsv", "jsonl"):
        raise DataError(f"{path}: unknown table format {fmt or os.path.splitext(path)[1]!r}; "
                        f"use a .csv, .tsv or .jsonl file or pass the format explicitly")
    if label is not None and not regression and not labels:
        raise DataError(f"{path}: classification needs the list of labels (in class-id order) "
                        f"for column {label!r}; pass labels=... or regression=True")
    label_list = None if regression else list(labels or [])
    columns = [c for c in (text_a, text_b, label) if c is not None]
    name = os.path.basename(path)
    examples: list[Example] = []
    for number, row in _table_rows(path, fmt, columns):
        for c in (text_a, text_b):
            if c is not None and not isinstance(row[c], str):
                raise DataError(f"{path}:{number}: column {c!r} holds {row[c]!r}, expected text")
            if c is not None and not row[c].strip():
                what = "whitespace only" if row[c] else "empty"
                raise DataError(f"{path}:{number}: column {c!r} is {what}; every row needs "
                                "text: fill it in or remove the row")
        examples.append({
            "guid": f"{name}:{number}",
            "text_a": row[text_a],
            "text_b": row[text_b] if text_b is not None else None,
            "label": None if label is None else _label_id(row[label], label_list,
                                                          f"{path}:{number}"),
        })
    return examples


def _table_rows(path: str, fmt: str, columns: Sequence[str]) -> Iterator[tuple[int, dict]]:
    """(line number, {column: value}) per row, after checking the wanted columns exist."""
    if fmt == "jsonl":
        for number, line in _lines(path):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not a JSON object ({e.msg} at column "
                                f"{e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line, got "
                                f"{type(row).__name__}")
            _check_columns(path, number, columns, list(row))
            yield number, row
        return
    if fmt == "tsv":
        lines = _lines(path)
        first = next(lines, None)
        if first is None:
            raise DataError(f"{path}: empty file; expected a header line")
        header = first[1].split("\t")
        _check_columns(path, first[0], columns, header)
        for number, line in lines:
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != len(header):
                raise DataError(f"{path}:{number}: {len(fields)} tab-separated fields but the "
                                f"header has {len(header)}")
            yield number, dict(zip(header, fields))
        return
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    try:
        header = reader.fieldnames
        if not header:
            raise DataError(f"{path}: empty file; expected a header line")
        _check_columns(path, 1, columns, header)
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise DataError(f"{path}:{reader.line_num}: the row's field count differs "
                                f"from the header's {len(header)}")
            yield reader.line_num, row
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e}); check the quoting "
                        "of this row") from None


def _check_columns(path: str, number: int, wanted: Sequence[str], present: list) -> None:
    for c in wanted:
        if c not in present:
            raise DataError(f"{path}:{number}: column {c!r} not found; columns present: "
                            f"{present}. Pass the right column name")


# ------------------------------------------------------------------------------------ SQuAD


def read_squad(path: str) -> list[Example]:
    """Flattens a SQuAD v1.1 / v2.0 JSON file into one dict per question.

    Args:
      path: the dataset JSON ({"version", "data": [{"title", "paragraphs": [...]}]}).

    Returns:
      [{"id", "title", "context", "question", "answers", "is_impossible"}]; v1.1 questions
      have is_impossible False.
    """
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not a SQuAD JSON file ({e.msg} at line {e.lineno}, column "
                        f"{e.colno})") from None
    if not isinstance(data, dict) or "data" not in data:
        raise DataError(f"{path}: no top-level 'data' list; expected a SQuAD v1.1/v2.0 JSON")
    examples: list[Example] = []
    for a, article in enumerate(_squad_list(data["data"], f"{path}: 'data'")):
        paragraphs = _squad_list(article.get("paragraphs", []) if isinstance(article, dict)
                                 else None, f"{path}: data[{a}].paragraphs")
        for p, paragraph in enumerate(paragraphs):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str):
                raise DataError(f"{where}: no 'context' string")
            for qa in _squad_list(paragraph.get("qas", []), f"{where}.qas"):
                for key in ("id", "question"):
                    if not isinstance(qa, dict) or key not in qa:
                        raise DataError(f"{where}: a question without {key!r}")
                examples.append({
                    "id": qa["id"],
                    "title": article.get("title", ""),
                    "context": paragraph["context"],
                    "question": qa["question"],
                    "answers": [_squad_answer(x, f"{where}: question {qa['id']!r}")
                                for x in _squad_list(qa.get("answers", []),
                                                     f"{where}: question {qa['id']!r} answers")],
                    "is_impossible": bool(qa.get("is_impossible", False)),
                })
    return examples


def _squad_list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise DataError(f"{where} is {type(value).__name__}, expected a list (SQuAD layout: "
                        "data[].paragraphs[].qas[])")
    return value


def _squad_answer(answer: Any, where: str) -> dict:
    """{"text", "answer_start"} of one answer, checked: a text and a whole-number start."""
    if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
        raise DataError(f"{where}: an answer without a 'text' string ({answer!r})")
    start = answer.get("answer_start")
    if isinstance(start, bool) or not isinstance(start, (int, str)) or \
            not str(start).strip().lstrip("-").isdigit():
        raise DataError(f"{where}: answer {answer['text']!r} has answer_start {start!r}; "
                        "expected the character offset of the answer in the context")
    return {"text": answer["text"], "answer_start": int(start)}


# ------------------------------------------------------------------------------------ CoNLL


def read_conll(path: str, tag_column: int = -1, word_column: int = 0) -> list[Example]:
    """Reads CoNLL-style token files: one "word ... tag" line per token, blank between sentences.

    "-DOCSTART-" lines (document separators in CoNLL-2003) are skipped; one inside a sentence
    (no blank line before it) is an error, as is a token line whose column count differs from
    the file's first token line (a missing tag column, a word holding a space).

    Args:
      path: the file.
      tag_column: column of the tag (-1: last; CoNLL-2003 NER is column 3 = last).
      word_column: column of the word.

    Returns:
      [{"guid": "<file>:<first line>", "words", "tags"}].
    """
    name = os.path.basename(path)
    sentences: list[Example] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    columns = None  # (count, line) of the first token line: every token line has as many

    def flush():
        if words:
            sentences.append({"guid": f"{name}:{start}", "words": list(words),
                              "tags": list(tags)})
            words.clear()
            tags.clear()

    need = max(word_column, tag_column) + 1 if tag_column >= 0 else max(word_column + 1, 2)
    for number, line in _lines(path):
        fields = line.split()
        if not fields:
            flush()
            continue
        if fields[0] == "-DOCSTART-":
            if words:
                raise DataError(f"{path}:{number}: -DOCSTART- inside the sentence that starts "
                                f"at line {start}; put a blank line before it to end the "
                                "sentence")
            continue
        if len(fields) < need:
            raise DataError(f"{path}:{number}: {len(fields)} columns in {line!r}; expected "
                            f"at least {need} (word column {word_column}, tag column "
                            f"{tag_column})")
        if columns is None:
            columns = (len(fields), number)
        elif len(fields) != columns[0]:
            raise DataError(f"{path}:{number}: {len(fields)} columns in {line!r} but line "
                            f"{columns[1]} has {columns[0]}; every token line needs the same "
                            "columns (word ... tag, separated by spaces or tabs)")
        if not words:
            start = number
        words.append(fields[word_column])
        tags.append(fields[tag_column])
    flush()
    return sentences


# ------------------------------------------------------------------------------------- TFDS

# TFDS glue/* text features per task (they differ from the GLUE TSV header names).
_TFDS_GLUE_TEXT = {
    "cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"), "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"), "stsb": ("sentence1", "sentence2"),
}


def _text(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def tfds_examples(name: str, split: str, data_dir: str | None = None) -> list[Example]:
    """Examples of an already prepared TFDS dataset, as the same dicts as the file readers.

    Supported: glue/<task> (class ids follow the GLUE table's label order: MNLI's TFDS order is
    remapped by name), squad (/v1.1, /v2.0) and conll2003. Nothing is downloaded: prepare the
    data first with `tfds build NAME --data_dir DIR`.

    Args:
      name: TFDS name, e.g. "glue/mrpc", "squad/v2.0", "conll2003".
      split: split name, e.g. "train", "validation_matched".
      data_dir: TFDS data directory (default: TFDS's own default).

    Returns:
      A list of example dicts (see the module docstring).
    """
    tfds = import_tfds()  # lazy: only this reader needs TFDS (an optional extra)

    family = name.split("/")[0].split(":")[0]
    if family not in ("glue", "squad", "conll2003"):
        raise DataError(f"TFDS dataset {name!r} is not supported; use glue/<task>, squad or "
                        f"conll2003, or export it to a file and use a file reader")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # TFDS raises several types for unknown names/configs
        raise DataError(f"TFDS dataset {name!r}: {str(e).splitlines()[0]}") from None
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError:
        raise DataError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r}; run "
                        f"`tfds build {name} --data_dir DIR` first (this loader never "
                        f"downloads)") from None
    features = builder.info.features
    rows = ds.as_numpy_iterator()
    if family == "glue":
        task = glue_task(name.split("/")[1].split(":")[0])
        a, b = _TFDS_GLUE_TEXT[task.name]
        names = None if task.is_regression else list(features["label"].names)
        if names is not None and set(names) == set(task.labels):
            remap = [task.labels.index(n) for n in names]  # same names, other order (MNLI)
        else:
            remap = None  # binary tasks: TFDS id 1 is GLUE's "1"
        out = []
        for r in rows:
            raw = r["label"]
            if task.is_regression:
                lab = float(raw)
            elif int(raw) < 0:
                lab = None  # test splits carry -1
            else:
                lab = remap[int(raw)] if remap else int(raw)
            out.append({"guid": str(int(r["idx"])), "text_a": _text(r[a]),
                        "text_b": _text(r[b]) if b else None, "label": lab})
        return out
    if family == "squad":
        return [{
            "id": _text(r["id"]), "title": _text(r["title"]), "context": _text(r["context"]),
            "question": _text(r["question"]),
            "answers": [{"text": _text(t), "answer_start": int(s)}
                        for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"])],
            "is_impossible": bool(r["is_impossible"]) if "is_impossible" in r
            else len(r["answers"]["text"]) == 0,
        } for r in rows]
    tag_names = features["ner"].feature.names
    out = []
    for i, r in enumerate(rows):
        words = [_text(w) for w in r["tokens"]]
        tags = [tag_names[int(t)] for t in r["ner"]]
        if len(words) != len(tags):
            raise DataError(f"TFDS {name}[{split}] example {i}: {len(words)} tokens but "
                            f"{len(tags)} tags")
        out.append({"guid": f"{split}:{i}", "words": words, "tags": tags})
    return out
