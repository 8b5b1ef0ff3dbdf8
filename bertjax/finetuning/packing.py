"""Fine-tuning rows that hold several examples (``config.data.examples_per_row`` > 1).

Sentence tasks are short: SST-2 averages ~25 tokens in rows of 128, so one example per row
spends most of the encoder on padding. Packed, a row holds up to M examples back to back, each
with its own [CLS] ... [SEP]; ``position_ids`` restart at 0 for each, ``pack_ids`` (1..M, 0 on
padding) confine attention to the example (bertjax.model.attention_mask) and ``cls_positions``
[R, M] point the classifier at each example's [CLS]. Per-example targets move to [R, M] slots,
with ``example_mask`` [R, M] saying which slots hold one; per-token targets (token tagging's
labels) move with their tokens and are -1 (ignored) elsewhere. The outputs are those of the
examples alone, up to float rounding (tests/finetuning/test_ft_packing.py).

Training keeps the recipe of one example per row: a step still takes ``global_batch_size``
examples, in the epoch's permutation order; best-fit packing puts them into a fixed number of
rows (``rows_per_step``, from the training set's lengths) and an example that does not fit
waits at the head of the queue for the next step. Steps, examples per step (nearly always the
full batch) and the learning-rate schedule stay as they were; only padding is skipped. An
epoch's plan is a function of (seed, epoch), so a resumed run packs as the uninterrupted one.

Evaluation packs the whole split (best fit, longest first) and maps the per-slot outputs back
to the examples in order.

numpy only: no JAX or TensorFlow here.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from bertjax import config as config_lib

FEATURE_KEYS = ("input_ids", "input_mask", "segment_ids")
PACKED_KEYS = ("position_ids", "pack_ids", "cls_positions")  # model inputs packing adds
SLACK = 1.15  # rows per step: 15% more than the batch's mean tokens need


def lengths(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Real tokens of each row (rows are left-aligned: [CLS] A [SEP] (B [SEP]) then padding)."""
    return arrays["input_mask"].sum(axis=1).astype(np.int64)


def check(config: Any, packs: bool) -> int:
    """``config.data.examples_per_row`` (M), checked before anything is read or compiled.

    Args:
      packs: whether the family can take packed rows (classification, regression, tagging).

    Raises:
      ConfigError: M < 1, more examples than fit a row (3 tokens each at least), or M > 1 for
        a family that cannot pack.
    """
    m = config.data.examples_per_row
    most = config.max_seq_length // 3
    if not isinstance(m, int) or not 1 <= m <= most:
        raise config_lib.ConfigError(
            f"config.data.examples_per_row={m!r}; expected 1 (one example per row) up to "
            f"{most} (rows of {config.max_seq_length} tokens, at least 3 per example)")
    if m > 1 and not packs:
        raise config_lib.ConfigError(
            f"config.data.examples_per_row={m} packs sentence and token classification rows; "
            "span QA (whose windows fill their rows) takes one example per row: set "
            "--config.data.examples_per_row=1")
    return m


def best_fit(lens: np.ndarray, items: Sequence[int], slots: int, seq_len: int,
             max_rows: int | None = None) -> tuple[list[list[int]], list[int]]:
    """Places examples, longest first, each into the open row with the least room that fits it.

    Args:
      lens: tokens of every example.
      items: the example indices to place (ties in length keep this order).
      slots: examples a row may hold (M).
      seq_len: tokens a row holds (L).
      max_rows: at most this many rows (None: as many as needed).

    Returns:
      (rows: example indices per row in placement order, left: those that fit nowhere, in
      their order in ``items``).
    """
    items = np.asarray(items, np.int64)
    order = items[np.argsort(-lens[items], kind="stable")]
    rows: list[list[int]] = []
    room: list[int] = []
    by_room: list[list[int]] = [[] for _ in range(seq_len + 1)]  # room -> open rows (LIFO)
    left: list[int] = []
    for i in order.tolist():
        n = int(lens[i])
        r = next((r for c in range(n, seq_len + 1) for r in by_room[c][-1:]), None)
        if r is None:
            if max_rows is not None and len(rows) >= max_rows:
                left.append(i)
                continue
            rows.append([])
            room.append(seq_len)
            r = len(rows) - 1
        else:
            by_room[room[r]].pop()
        rows[r].append(i)
        room[r] -= n
        if len(rows[r]) < slots and room[r] >= 3:  # still open: a 3-token example may come
            by_room[room[r]].append(r)
    if left:
        position = {int(i): k for k, i in enumerate(items)}
        left.sort(key=position.__getitem__)
    return rows, left


def pack(arrays: dict[str, np.ndarray], rows: list[list[int]], slots: int,
         num_rows: int | None = None,
         token_keys: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Packed arrays of the examples that ``rows`` places (see the module docstring).

    Args:
      arrays: a split's rows: input_ids / input_mask / segment_ids [N, L] and per-example
        targets [N, ...].
      rows: example indices per packed row.
      slots: M, the slot dimension of the per-example arrays.
      num_rows: pads with empty rows up to this many (default len(rows)).
      token_keys: the targets that are per token ([N, L, ...]; -1 outside the examples).

    Returns:
      (batch, index): the packed inputs, targets [R, M, ...] (per-token ones [R, L, ...]) and
      example_mask [R, M], and index [R, M] the example in each slot (-1 for an empty one).
    """
    r_total = num_rows or len(rows)
    seq_len = arrays["input_ids"].shape[1]
    lens = lengths(arrays)
    out = {k: np.zeros((r_total, seq_len), arrays[k].dtype) for k in FEATURE_KEYS}
    out["position_ids"] = np.zeros((r_total, seq_len), np.int32)
    out["pack_ids"] = np.zeros((r_total, seq_len), np.int32)
    out["cls_positions"] = np.zeros((r_total, slots), np.int32)
    out["example_mask"] = np.zeros((r_total, slots), np.float32)
    targets = [k for k in arrays if k not in FEATURE_KEYS and k != "example_mask"
               and k not in token_keys]
    for k in targets:
        out[k] = np.zeros((r_total, slots) + arrays[k].shape[1:], arrays[k].dtype)
    for k in token_keys:
        out[k] = np.full((r_total,) + arrays[k].shape[1:], -1, arrays[k].dtype)
    index = np.full((r_total, slots), -1, np.int64)
    for r, members in enumerate(rows):
        start = 0
        for s, i in enumerate(members):
            n = int(lens[i])
            for k in (*FEATURE_KEYS, *token_keys):
                out[k][r, start:start + n] = arrays[k][i, :n]
            out["position_ids"][r, start:start + n] = np.arange(n)
            out["pack_ids"][r, start:start + n] = s + 1
            out["cls_positions"][r, s] = start
            for k in targets:
                out[k][r, s] = arrays[k][i]
            index[r, s] = i
            start += n
    out["example_mask"] = (index >= 0).astype(np.float32)
    return out, index


def unpack(outputs: np.ndarray, index: np.ndarray, num_examples: int) -> np.ndarray:
    """Per-slot outputs [R, M, ...] back to per-example outputs [N, ...] in example order."""
    filled = index >= 0
    out = np.zeros((num_examples,) + outputs.shape[2:], outputs.dtype)
    out[index[filled]] = outputs[:len(index)][filled]
    return out


def unpack_tokens(outputs: np.ndarray, batch: dict[str, np.ndarray], index: np.ndarray,
                  num_examples: int) -> np.ndarray:
    """Per-token outputs of packed rows [R, L, ...] back to the examples' rows [N, L, ...]:
    each example's tokens from position 0, zeros after them."""
    out = np.zeros((num_examples,) + outputs.shape[1:], outputs.dtype)
    for r, s in zip(*np.nonzero(index >= 0)):
        start = batch["cls_positions"][r, s]
        n = int((batch["pack_ids"][r] == s + 1).sum())
        out[index[r, s], :n] = outputs[r, start:start + n]
    return out


def rows_per_step(lens: np.ndarray, batch: int, seq_len: int, slots: int, multiple: int) -> int:
    """Rows a training step packs ``batch`` examples into: room for their mean tokens with
    SLACK to spare and slots for all of them, rounded up to ``multiple`` (the batch-parallel
    devices and processes), at most the batch itself."""
    need = max(math.ceil(SLACK * batch * float(lens.mean()) / seq_len), math.ceil(batch / slots))
    return min(max(multiple, math.ceil(need / multiple) * multiple),
               math.ceil(batch / multiple) * multiple)


class TrainPlan:
    """Which examples each training step packs into which row, for every step of the run.

    Epoch e's examples come in ``default_rng([seed, e]).permutation(N)`` order (as unpacked
    training draws them); steps take ``batch`` at a time from the head of the queue, and what
    does not fit the step's rows goes back to the head. The queue's last < batch examples are
    not used that epoch (as unpacked training drops the remainder).
    """

    def __init__(self, lens: np.ndarray, batch: int, rows: int, slots: int, seq_len: int,
                 seed: int, token_keys: Sequence[str] = ()):
        self.lens, self.batch, self.rows, self.slots = lens, batch, rows, slots
        self.seq_len, self.seed, self.token_keys = seq_len, seed, tuple(token_keys)
        self._counts: list[int] = []  # steps of each epoch planned so far
        self._current: tuple[int, list[list[list[int]]]] | None = None

    def epoch(self, e: int) -> list[list[list[int]]]:
        """The steps of epoch ``e``, each a list of rows of example indices."""
        if self._current is not None and self._current[0] == e:
            return self._current[1]
        order = np.random.default_rng([self.seed, e]).permutation(len(self.lens)).tolist()
        steps, head = [], 0
        waiting: list[int] = []
        while len(waiting) + len(order) - head >= self.batch:
            take = self.batch - len(waiting)
            candidates = waiting + order[head:head + take]
            head += take
            rows, waiting = best_fit(self.lens, candidates, self.slots, self.seq_len,
                                     self.rows)
            steps.append(rows)
        self._current = (e, steps)
        return steps

    def step(self, s: int) -> list[list[int]]:
        """The rows of global step ``s`` (0-based), walking the epochs before it."""
        e = 0
        while True:
            if e == len(self._counts):
                self._counts.append(len(self.epoch(e)))
            if s < self._counts[e]:
                return self.epoch(e)[s]
            s -= self._counts[e]
            e += 1

    def batch_arrays(self, arrays: dict[str, np.ndarray], s: int) -> dict[str, np.ndarray]:
        """The packed global batch of step ``s`` (``self.rows`` rows)."""
        return pack(arrays, self.step(s), self.slots, self.rows, self.token_keys)[0]


def layout(num_rows: int, slots: int, arrays: dict[str, np.ndarray],
           token_keys: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """An empty packed batch of ``num_rows`` rows of ``arrays``' kind (shapes for jit)."""
    return pack({k: v[:0] for k, v in arrays.items()}, [], slots, num_rows, token_keys)[0]


def fill(lens: np.ndarray, rows: list[list[int]], seq_len: int) -> float:
    """The share of the rows' tokens that are real."""
    return float(sum(int(lens[i]) for r in rows for i in r)) / max(1, len(rows) * seq_len)
