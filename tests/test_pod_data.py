"""Data and agreement on a pod: hosts without shared storage, what the hosts' agreement names,
and how a process finds its cluster.

The multi-process tests start real processes joined by jax.distributed on 127.0.0.1 with gloo
collectives (the runtime of a pod), each with its own HOME, as TPU VMs or pods without shared
storage have: the default embedded corpus then lives in a different directory on every host.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

from envs import xla_flags  # noqa: E402
from run_metrics import train_losses  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "bert_tiny.py")  # absolute: some runs start elsewhere
# The default data (source "embedded", no path: each host's ~/.cache/bertjax), a small slice.
SMALL = ["--config.model.vocab_size=1000", "--config.data.max_documents=120",
         "--config.global_batch_size=16", "--config.eval_batch_size=16",
         "--config.max_seq_length=64", "--config.max_predictions=10", "--config.log_every=1",
         "--config.progress_bar=False", "--config.optim.warmup_steps=1",
         "--config.total_steps=2", "--config.eval_every=2", "--config.checkpoint_every=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(i: int, n: int, port: int, home) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "BERTJAX_CACHE"}
    return dict(env, PYTHONPATH=ROOT, HOME=str(home), BERTJAX_COORDINATOR=f"127.0.0.1:{port}",
                BERTJAX_NUM_PROCESSES=str(n), BERTJAX_PROCESS_ID=str(i), JAX_PLATFORMS="cpu",
                XLA_FLAGS=xla_flags(4))


def _pretrain_on_hosts(homes, workdir, *extra, cwds=None) -> list[tuple[int, str]]:
    """One bertjax.pretrain per home (process i has HOME=homes[i]); (exit code, output) each."""
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "bertjax.pretrain", f"--config={CONFIG}:runlocal",
         f"--workdir={workdir}", *SMALL, *extra], cwd=str(cwds[i]) if cwds else ROOT,
        env=_env(i, len(homes), port, home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for i, home in enumerate(homes)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    return [(p.returncode, out) for p, out in zip(procs, outs)]


def _tree_sha256(root) -> dict[str, str]:
    out = {}
    for d, _, names in os.walk(root):
        for name in names:
            path = os.path.join(d, name)
            out[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


@pytest.mark.slow
def test_hosts_without_shared_storage_each_prepare_the_same_default_data(tmp_path):
    """Each host prepares the embedded corpus into its own home, byte for byte the same, and
    the run trains; a host with other data, or none, stops every host naming it."""
    homes = [tmp_path / "home0", tmp_path / "home1"]
    for home in homes:
        home.mkdir()
    results = _pretrain_on_hosts(homes, tmp_path / "run")
    for code, out in results:
        assert code == 0, out[-3000:]
    assert sorted(train_losses(tmp_path / "run")) == [1, 2]
    copies = [home / ".cache" / "bertjax" / "embedded-v1000-docs120" for home in homes]
    trees = [_tree_sha256(c) for c in copies]
    assert "metadata.json" in trees[0] and any(n.startswith("train-") for n in trees[0])
    assert trees[0] == trees[1]  # the same bytes: tokenizer, shards, metadata

    # A host whose copy differs (here: a metadata.json written by some other preparation)
    # stops both, before anything is compiled, with each host's data named.
    meta_path = copies[1] / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["eval_fraction"] = 0.05
    meta_path.write_text(json.dumps(meta))
    for code, out in _pretrain_on_hosts(homes, tmp_path / "run2"):
        assert code == 2, out[-3000:]
        line = next(l for l in out.splitlines() if "hosts disagree" in l)
        assert "hosts disagree on data (prepared data whose metadata.json has sha256 " in line
        assert "on process 0" in line and "on process 1" in line and "compiled" not in out

    # Prepared data at a relative path that only host 0's directory holds: every host stops
    # with host 1's own one-line error.
    shutil.copytree(copies[0], homes[0] / "prepared")
    results = _pretrain_on_hosts(homes, tmp_path / "run3", "--config.data.source=prepared",
                                 "--config.data.path=prepared", "--config.data.max_documents=0",
                                 cwds=homes)
    for code, out in results:
        assert code == 2, out[-3000:]
        assert "error: process 1 of 2: config.data.path='prepared' holds no complete " \
               "preparation" in out, out[-3000:]


_AGREE = textwrap.dedent("""
    import sys
    from bertjax import multihost
    multihost.initialize()
    i = multihost.process_index()
    facts = {"config.lr": [0.001, 0.001, 0.002][i], "code version": "abc"}
    if i == 1:
        facts["config.only_new_code"] = 3
    try:
        multihost.check_hosts_agree(facts)
    except multihost.ClusterError as e:
        print("ERROR", e)
    print("PROBLEM", multihost.any_host_problem("disk full" if i == 2 else None))
    print("NONE", multihost.any_host_problem(None))
""")


def test_the_agreement_names_each_difference_and_each_hosts_value(tmp_path):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", _AGREE], cwd=ROOT,
                              env=_env(i, 3, port, tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    lines = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        lines.append({line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines()
                      if line.split(" ", 1)[0] in ("ERROR", "PROBLEM", "NONE")})
    for got in lines:  # the same lines on every host
        assert got == lines[0]
    error = lines[0]["ERROR"]
    assert error.startswith("hosts disagree on ")
    assert "config.lr (0.001 on processes 0-1; 0.002 on process 2)" in error
    # a setting only one host's code has is named, with the hosts that lack it
    assert "config.only_new_code ((not set) on processes 0, 2; 3 on process 1)" in error
    assert "code version" not in error
    assert lines[0]["PROBLEM"] == "process 2 of 3: disk full"
    assert lines[0]["NONE"] == "None"


# --------------------------------------------------------------- finding the cluster


@pytest.fixture
def calls(monkeypatch):
    """jax.distributed.initialize recorded instead of run; no launcher variables set."""
    import jax

    from bertjax import multihost
    got = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: got.append(kw))
    monkeypatch.setattr(jax.config, "update", lambda *a: None)
    for name in ("BERTJAX_COORDINATOR", "BERTJAX_NUM_PROCESSES", "BERTJAX_PROCESS_ID",
                 "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
                 "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(multihost, "on_cloud_tpu_vm", lambda dev="/dev": False)
    return got


def test_one_process_without_a_launcher_starts_nothing(calls):
    from bertjax import multihost
    multihost.initialize()
    assert calls == []


@pytest.mark.parametrize("env", [{"BERTJAX_COORDINATOR": "auto"}, {"SLURM_NTASKS": "16"},
                                 {"TPU_WORKER_HOSTNAMES": "a,b"},
                                 {"TPU_PROCESS_ADDRESSES": "a:8471,b:8471"},
                                 {"MEGASCALE_COORDINATOR_ADDRESS": "a"}])
def test_a_detected_cluster_is_left_to_jax_with_no_coordinator(calls, monkeypatch, env):
    """TPU VMs, TPU on GKE, SLURM: JAX reads the coordinator (on its own port), the count and
    the index itself; bertjax passes none of them."""
    from bertjax import multihost
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    multihost.initialize()
    assert len(calls) == 1
    kw = calls[0]
    assert (kw["coordinator_address"], kw["num_processes"], kw["process_id"]) == (None,) * 3


def test_a_cloud_tpu_vm_is_detected_and_a_lone_one_runs_alone(calls, monkeypatch):
    import jax

    from bertjax import multihost
    monkeypatch.setattr(multihost, "on_cloud_tpu_vm", lambda dev="/dev": True)
    multihost.initialize()
    assert calls and calls[0]["coordinator_address"] is None

    def no_slice(**kw):  # what JAX raises when its detection finds no cluster
        raise ValueError("coordinator_address should be defined.")
    monkeypatch.setattr(jax.distributed, "initialize", no_slice)
    multihost.initialize()  # a single TPU VM whose metadata names no slice: one process
    monkeypatch.setattr(multihost, "on_cloud_tpu_vm", lambda dev="/dev": False)
    monkeypatch.setenv("BERTJAX_COORDINATOR", "auto")
    with pytest.raises(multihost.ClusterError, match=r"^no cluster found \(BERTJAX_COORDINATOR="
                       r"auto: .*; pass --coordinator_address=HOST:PORT") as e:
        multihost.initialize()
    assert "\n" not in str(e.value)


def test_explicit_coordinator_wins(calls, monkeypatch):
    from bertjax import multihost
    monkeypatch.setenv("SLURM_NTASKS", "4")
    multihost.initialize("10.0.0.1:1234", 2, 1)
    assert [(c["coordinator_address"], c["num_processes"], c["process_id"]) for c in calls] \
        == [("10.0.0.1:1234", 2, 1)]


def test_tpu_vm_detection_reads_device_files(tmp_path, monkeypatch):
    import importlib.util

    from bertjax import multihost
    assert not multihost.on_cloud_tpu_vm(str(tmp_path))  # no chips
    (tmp_path / "vfio").mkdir()
    (tmp_path / "vfio" / "vfio").touch()  # the container device alone is no chip
    assert not multihost.on_cloud_tpu_vm(str(tmp_path))
    (tmp_path / "vfio" / "0").touch()  # a v5e chip
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "libtpu" else real(name, *a))
    assert multihost.on_cloud_tpu_vm(str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "libtpu" else real(name, *a))
    assert not multihost.on_cloud_tpu_vm(str(tmp_path))  # chips but no libtpu


# ------------------------------------------------------- the embedded corpus on a bucket


def test_the_embedded_corpus_on_a_bucket_is_the_same_data(tmp_path, monkeypatch, capsys):
    """config.data.path=gs://... (the ram:// stand-in of tests/test_paths.py): prepared there
    once, checked there, and the fingerprint the hosts compare equals a local copy's."""
    from test_paths import RamPath  # noqa: F401 (registers ram:// with epath)

    from bertjax import config as config_lib
    from bertjax import inputs
    from etils import epath
    monkeypatch.setattr(inputs, "EMBEDDED_PROCESSES", 1)  # ram:// lives in this process only
    fingerprints = []
    bucket = "ram://pod_data_bucket"
    try:
        for path in (f"{bucket}/embedded", str(tmp_path / "embedded")):
            c = config_lib.base_config()
            c.model.vocab_size, c.data.max_documents, c.data.path = 1000, 60, path
            c.progress_bar = False
            assert inputs.data_fingerprint(c).startswith("no prepared data at ")
            inputs.ensure_prepared(c)
            inputs.check(c)
            fingerprints.append(inputs.data_fingerprint(c))
            inputs.ensure_prepared(c)  # prepared once: a second call only checks
        assert epath.Path(f"{bucket}/embedded-docs60/metadata.json").exists()
    finally:
        epath.Path(bucket).rmtree(missing_ok=True)
    assert fingerprints[0] == fingerprints[1]
    assert fingerprints[0].startswith("prepared data whose metadata.json has sha256 ")
    assert capsys.readouterr().out.count("preparing the embedded corpus") == 2
