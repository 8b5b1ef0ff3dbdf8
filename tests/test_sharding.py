"""Mesh construction, logical->mesh rules, and the golden partition specs of every parameter."""

import logging
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from bertjax import config as config_lib
from bertjax import sharding
from bertjax import train

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "partition_specs_tiny_2x2x2.txt")


def _table(mesh):
    c = config_lib.base_config()
    model = train.build_model(c)
    boxed = train.abstract_params(model)
    specs = sharding.tree_shardings(nn.meta.unbox(boxed), sharding.logical_specs(boxed), mesh,
                                    sharding.DEFAULT_RULES)
    rows = []
    for path, s in jax.tree_util.tree_flatten_with_path(specs)[0]:
        rows.append(f"{jax.tree_util.keystr(path)}  {tuple(s.spec)}")
    return "\n".join(rows) + "\n"


def test_partition_specs_match_golden_table(caplog, monkeypatch):
    monkeypatch.setattr(sharding, "_LOGGED_FALLBACKS", set())
    mesh = sharding.make_mesh(2, 2, 2)
    with caplog.at_level(logging.INFO, logger=sharding.__name__):
        table = _table(mesh)
    # every rule of the tiny model applies on 2×2×2: no parameter falls back, nothing is logged
    assert [r.getMessage() for r in caplog.records if r.name == sharding.__name__] == []
    if os.environ.get("BERTJAX_REGEN_GOLDEN"):
        with open(GOLDEN, "w") as f:
            f.write(table)
    with open(GOLDEN) as f:
        assert table == f.read(), "partition specs changed; rerun with BERTJAX_REGEN_GOLDEN=1 " \
                                  "if intended and review the diff"


def test_state_is_born_sharded_and_large_kernels_are_split():
    mesh = sharding.make_mesh(2, 2, 2)
    c = config_lib.base_config()
    state, shardings = train.build(c, mesh)
    for path, x in jax.tree_util.tree_flatten_with_path(state.params)[0]:
        name = jax.tree_util.keystr(path)
        shard = x.addressable_shards[0].data.shape
        if x.ndim >= 2 and x.size >= 128 * 128 and ("kernel" in name or "word_emb" in name):
            # split over fsdp and tensor: each device holds at most a quarter
            assert np.prod(shard) * 4 <= x.size, (name, x.shape, shard)
    # optimizer moments follow the parameters' sharding; step counts are replicated
    mu = state.opt_state[1].mu  # (clip, adam, decay, trust ratio, schedule)
    kernel = mu["bert"]["layer_0"]["intermediate"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert state.step.sharding.spec == P()


def test_uneven_dimensions_fall_back_to_replication():
    mesh = sharding.make_mesh(1, 2, 4)
    rules = sharding.DEFAULT_RULES
    # 30522 is divisible by 2 but not by 4: the vocab axis stays whole on tensor=4
    assert sharding.logical_to_spec(("vocab", "embed"), (30522, 128), mesh, rules) == P(
        None, "fsdp")
    assert sharding.logical_to_spec(("vocab", "embed"), (30720, 128), mesh, rules) == P(
        "tensor", "fsdp")
    # a batch of 2 on data×fsdp = 1×2 splits, a batch of 1 does not
    assert sharding.logical_to_spec(("act_batch",), (2,), mesh, rules) == P("fsdp")
    assert sharding.logical_to_spec(("act_batch",), (1,), mesh, rules) == P()


def test_parameters_that_fall_back_to_replication_are_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(sharding, "_LOGGED_FALLBACKS", set())
    mesh = sharding.make_mesh(1, 2, 4)
    rules = tuple(sharding.DEFAULT_RULES) + (("rows", "tensor"), ("cols", "tensor"))
    f32 = np.float32
    abstract = {"emb": {"table": jax.ShapeDtypeStruct((30522, 128), f32)},  # 30522 % 4 != 0
                "mlp": {"kernel": jax.ShapeDtypeStruct((128, 512), f32)},  # splits as asked
                "square": jax.ShapeDtypeStruct((8, 8), f32)}  # tensor taken by the 1st dim
    logical = {"emb": {"table": P("vocab", "embed")}, "mlp": {"kernel": P("embed", "mlp")},
               "square": P("rows", "cols")}
    with caplog.at_level(logging.INFO, logger=sharding.__name__):
        for _ in range(3):  # called again (evaluation, restore): still one line per parameter
            shardings = sharding.tree_shardings(abstract, logical, mesh, rules)
    assert shardings["emb"]["table"].spec == P(None, "fsdp")
    assert shardings["mlp"]["kernel"].spec == P("fsdp", "tensor")
    assert shardings["square"].spec == P("tensor")
    logged = [r for r in caplog.records if r.name == sharding.__name__]
    records = {r.getMessage().split()[1]: r for r in logged}
    assert len(logged) == 2 and sorted(records) == ["emb/table", "square"], [
        r.getMessage() for r in logged]
    uneven = records["emb/table"]
    assert uneven.levelno == logging.WARNING
    for needle in ("(30522, 128)", "('vocab', 'embed')", "replication",
                   "30522 does not divide by mesh axis tensor=4"):
        assert needle in uneven.getMessage(), uneven.getMessage()
    taken = records["square"]
    assert taken.levelno == logging.INFO
    assert "(8, 8)" in taken.getMessage() and "mesh axis tensor already splits" in \
        taken.getMessage()


def test_mesh_shape_resolution_and_errors():
    assert sharding.mesh_shape(-1, 2, 2, 8) == (2, 2, 2)
    assert sharding.mesh_shape(8, 1, 1, 8) == (8, 1, 1)
    with pytest.raises(sharding.MeshError, match="8 devices are present"):
        sharding.mesh_shape(2, 2, 1, 8)
    with pytest.raises(sharding.MeshError, match="more than one -1"):
        sharding.mesh_shape(-1, -1, 1, 8)
    with pytest.raises(sharding.MeshError, match="not divisible"):
        sharding.mesh_shape(-1, 3, 1, 8)


def test_unknown_logical_axis_names_the_rule_to_add():
    mesh = sharding.make_mesh(8, 1, 1)
    with pytest.raises(KeyError, match="add it to config.sharding.rules"):
        sharding.logical_to_spec(("nonsense",), (8,), mesh, sharding.DEFAULT_RULES)
