"""Packed rows compute exactly what their pairs compute in rows of their own.

Twelve short synthetic pairs, once one per row (padded to L) and once three per row (four rows,
pack ids, restarting positions, one NSP slot per pair): the encoder's hidden states at every real
token, the MLM and NSP logits, and one LAMB step on a 2x2x2 mesh (loss and new parameters) agree.
A mask that leaked across pairs, positions that did not restart or a pooler reading the wrong
[CLS] would each break them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax import config as config_lib
from bertjax import model as model_lib
from bertjax import multihost
from bertjax import sharding
from bertjax import synthetic
from bertjax import train
from tolerances import chained_sums, check_f32_close

L, PER_ROW, PAIRS, SHORT = 48, 3, 12, 16


def _config(attention_impl):
    c = config_lib.base_config()
    c.model.vocab_size, c.max_seq_length, c.max_predictions = 512, L, 3 * PER_ROW
    c.global_batch_size, c.total_steps, c.optim.warmup_steps = PAIRS, 10, 0
    c.model.hidden_dropout = c.model.attention_dropout = 0.0
    c.model.attention_impl = attention_impl
    return c


def _batches():
    """(one pair per row [12, L], three pairs per row [4, L]) holding the same 12 pairs.

    synthetic.packed_batch packs the pairs that synthetic.batch draws from the same generator
    state; its layout is checked on its own below.
    """
    short = synthetic.batch(np.random.default_rng(3), PAIRS, SHORT, 3, 512, alphabet=40)
    packed = synthetic.packed_batch(np.random.default_rng(3), PAIRS // PER_ROW, L, 3 * PER_ROW,
                                    512, PER_ROW, alphabet=40)
    pad = lambda x: np.pad(x, [(0, 0), (0, L - SHORT)])  # noqa: E731
    single = {k: pad(v) if v.shape[1:] == (SHORT,) else v for k, v in short.items()}
    where = {}  # (pair, position in its own row) -> (row, position in the packed row)
    for i in range(PAIRS):
        r, slot = divmod(i, PER_ROW)
        start = int(packed["next_sentence_positions"][r, slot])
        where.update({(i, t): (r, start + t) for t in range(int(short["input_mask"][i].sum()))})
    assert packed["input_mask"].sum() == single["input_mask"].sum()  # 4 rows instead of 12
    return single, packed, where


def _apply(model, params, b, **kw):
    return model.apply({"params": params}, b["input_ids"], b["input_mask"], b["segment_ids"],
                       b["masked_lm_positions"], b.get("position_ids"), **kw)


@pytest.mark.slow
@pytest.mark.parametrize("attention_impl", ["explicit", "xla"])
def test_packed_rows_compute_what_their_pairs_compute_alone(attention_impl):
    c = _config(attention_impl)
    single, packed, where = _batches()
    state, fns = train.build(c, sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    model, params = fns.model, jax.device_get(state.params)

    bert = model_lib.BertModel(model.cfg)
    seq1, _ = bert.apply({"params": params["bert"]}, single["input_ids"], single["input_mask"],
                         single["segment_ids"])
    seq3, _ = bert.apply({"params": params["bert"]}, packed["input_ids"], packed["input_mask"],
                         packed["segment_ids"], packed["position_ids"],
                         pack_ids=packed["pack_ids"])
    own = np.array([np.asarray(seq1)[i, t] for (i, t) in where])
    shared = np.array([np.asarray(seq3)[r, t] for (r, t) in where.values()])
    # Same float32 function on other shapes: only the summation order differs (tolerances.py).
    cfg = model.cfg
    k, n = max(cfg.hidden_size, cfg.intermediate_size, L), cfg.num_layers
    check_f32_close("packed vs alone: hidden states", shared, own, k=k, sums=chained_sums(n))

    mlm1, nsp1 = _apply(model, params, single)
    mlm3, nsp3 = _apply(model, params, packed, pack_ids=packed["pack_ids"],
                        next_sentence_positions=packed["next_sentence_positions"])
    used = single["masked_lm_weights"] > 0
    check_f32_close("packed vs alone: MLM logits", np.asarray(mlm3).reshape(PAIRS, 3, -1)[used],
                    np.asarray(mlm1)[used], k=k, sums=chained_sums(n, heads=2))
    assert nsp3.shape == (PAIRS // PER_ROW, PER_ROW, 2)
    check_f32_close("packed vs alone: NSP logits", np.asarray(nsp3).reshape(PAIRS, 2),
                    np.asarray(nsp1), k=k, sums=chained_sums(n, heads=2))

    # Without the block mask the pairs would see each other: the check above can fail.
    leaky, _ = bert.apply({"params": params["bert"]}, packed["input_ids"], packed["input_mask"],
                          packed["segment_ids"], packed["position_ids"])
    assert np.abs(np.asarray(leaky) - np.asarray(seq3)).max() > 1e-2


@pytest.mark.slow
def test_packed_train_step_equals_one_pair_per_row_on_a_mesh():
    c = _config("auto")
    single, packed, _ = _batches()
    mesh = sharding.make_mesh(2, 2, 2)
    out = []
    for batch in (single, packed):
        state, fns = train.build(c, mesh)
        step = train.jit_train_step(fns, batch)
        state, metrics = step(state, multihost.global_batch(batch, train.batch_shardings(
            fns, batch)))
        out.append((jax.device_get(state.params), jax.device_get(metrics)))
    (p1, m1), (p3, m3) = out
    for key in ("loss", "mlm_loss", "nsp_loss", "nsp_accuracy", "grad_norm", "real_tokens"):
        np.testing.assert_allclose(m3[key], m1[key], rtol=2e-5, err_msg=key)
    # LAMB's first step moves each weight by about lr (1e-3) times its sign-like Adam ratio,
    # which is sensitive for gradients near eps: 0.1% of a step is the tolerance.
    for x, y in zip(jax.tree.leaves(p3), jax.tree.leaves(p1)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # the padding packing removed: 12 rows of L vs 4
    assert float(m3["real_tokens"]) == single["input_mask"].sum()
    assert jnp.asarray(packed["input_mask"]).mean() > 2.5 * single["input_mask"].mean()


def test_synthetic_packed_rows_have_the_packed_layout():
    """The numpy packed rows (benchmarks, synthetic runs) follow the data pipeline's layout."""
    b = synthetic.batch(np.random.default_rng(1), 6, 64, 9, 512, pairs_per_row=3)
    assert b["next_sentence_positions"].shape == (6, 3) and b["masked_lm_positions"].shape == (6, 9)
    for r in range(6):
        pack, real = b["pack_ids"][r], b["input_mask"][r] > 0
        assert (real == (pack > 0)).all() and real[: real.sum()].all()
        for slot in range(3):
            span = np.nonzero(pack == slot + 1)[0]
            assert span[0] == b["next_sentence_positions"][r, slot] and (np.diff(span) == 1).all()
            assert b["input_ids"][r, span[0]] == 2  # [CLS]
            assert (b["position_ids"][r, span] == np.arange(len(span))).all()
        used = b["masked_lm_weights"][r] > 0
        picked = b["masked_lm_positions"][r, used]
        assert (pack[picked] > 0).all() and (b["input_ids"][r, picked] == synthetic.MASK_ID).all()
    assert b["next_sentence_weights"].sum() == 18
