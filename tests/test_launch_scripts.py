"""The pod launchers: TPU VM slice (gcloud), SLURM (srun) and Kubernetes (JobSet).

Nothing here reaches a cloud or a cluster: each script runs in its dry-run mode, or against a
fake `gcloud` / `srun` on PATH that records what it was given (the fake gcloud even runs the
remote command in a local shell, so the quoting of the pretrain flags is checked end to end).
Only bash and PyYAML are needed; the whole file takes well under a second per test.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(ROOT, "launch", "tpu_pod.sh")
SLURM = os.path.join(ROOT, "launch", "slurm.sbatch")
RENDER = os.path.join(ROOT, "launch", "k8s_render.sh")
TEMPLATE = os.path.join(ROOT, "launch", "k8s_jobset.yaml")

# A flag that only survives if every layer of quoting is right.
TRICKY = """--config.note=it's "a b" $HOME & | \\ done"""


def run(script: str, *args: str, env: dict | None = None, path: str | None = None):
    """Runs a launcher with a clean environment (none of the caller's SLURM_* or TPU_NAME)."""
    base = {"PATH": (path + os.pathsep if path else "") + os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    base.update(env or {})
    return subprocess.run(["bash", script, *args], env=base, cwd=ROOT, capture_output=True,
                          text=True, timeout=30)


def one_line_error(result) -> str:
    assert result.returncode != 0, result.stdout
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def executable(path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.mark.parametrize("script", [TPU, SLURM, RENDER])
def test_scripts_are_valid_bash(script):
    assert subprocess.run(["bash", "-n", script]).returncode == 0


# --- TPU VM slice -------------------------------------------------------------------------

TPU_ARGS = ("--tpu=my-pod", "--zone=us-central2-b", "--project=my-proj",
            "--workdir=gs://my-bucket/bert-base", "--config=configs/bert_base.py")


def test_tpu_dry_run_prints_describe_then_ssh_to_every_worker():
    r = run(TPU, *TPU_ARGS, "--dry-run", "--", "--config.optim.lr=1e-4")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if not line.startswith("#")]
    assert len(lines) == 2
    describe, ssh = lines
    assert describe.startswith("gcloud compute tpus tpu-vm describe my-pod ")
    assert "networkEndpoints[0].ipAddress" in describe
    assert ssh.startswith("gcloud compute tpus tpu-vm ssh my-pod ")
    for piece in ("--zone=us-central2-b", "--project=my-proj", "--worker=all", "cd bertjax &&",
                  "BERTJAX_COORDINATOR=<worker-0-ip>:8476", "python3 -m bertjax.pretrain",
                  "--config=configs/bert_base.py", "--workdir=gs://my-bucket/bert-base",
                  "--config.optim.lr=1e-4"):
        assert piece in ssh, piece
    assert r.stderr == ""  # gs:// workdir: no warning


def test_tpu_env_vars_and_dry_run_env_equal_flags():
    flags = run(TPU, *TPU_ARGS, "--dry-run")
    env = run(TPU, env={"TPU_NAME": "my-pod", "ZONE": "us-central2-b", "PROJECT": "my-proj",
                        "WORKDIR": "gs://my-bucket/bert-base", "CONFIG": "configs/bert_base.py",
                        "DRY_RUN": "1"})
    assert env.returncode == 0 and env.stdout == flags.stdout


def test_tpu_setup_runs_first_on_all_workers():
    r = run(TPU, *TPU_ARGS, "--setup", "--coordinator=auto", "--dry-run")
    setup, train = r.stdout.splitlines()
    assert "--worker=all" in setup and "git pull" in setup
    assert "pip install -q -r requirements.txt" in setup and "jax[tpu]" in setup
    assert "bertjax.pretrain" in train
    # auto: bertjax/JAX find the coordinator themselves; nothing is looked up or set
    assert "describe" not in r.stdout and "BERTJAX_COORDINATOR" not in r.stdout


def test_tpu_detach_survives_the_terminal():
    r = run(TPU, *TPU_ARGS, "--detach", "--dry-run")
    ssh = r.stdout.splitlines()[-1]
    assert "nohup env BERTJAX_COORDINATOR=" in ssh and "bertjax-pretrain.log" in ssh
    assert ssh.rstrip("'").endswith("&")


def test_tpu_runs_the_same_command_for_real(tmp_path):
    """A fake gcloud answers `describe` and runs --command in a shell, as a worker would."""
    home = tmp_path / "home"
    (home / "bertjax").mkdir(parents=True)
    log, argv_out = tmp_path / "gcloud.log", tmp_path / "argv"
    fakes = tmp_path / "bin"
    fakes.mkdir()
    executable(fakes / "gcloud", f"""#!/usr/bin/env bash
echo "$*" >> {log}
for a; do [[ $a == describe ]] && {{ echo 10.1.2.3; exit 0; }}; done
for a; do [[ $a == --command=* ]] && cmd="${{a#--command=}}"; done
cd {home} && exec bash -c "$cmd"
""")
    python = executable(tmp_path / "python", f"""#!/usr/bin/env bash
{{ echo "cwd=$PWD"; echo "coordinator=$BERTJAX_COORDINATOR"; printf '%s\\n' "$@"; }} > {argv_out}
""")
    r = run(TPU, *TPU_ARGS, "--", "--config.optim.lr=1e-4", TRICKY, path=str(fakes),
            env={"PYTHON": python})
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and " describe my-pod " in calls[0] and "--worker=all" in calls[1]
    got = argv_out.read_text().splitlines()
    assert got == [f"cwd={home}/bertjax", "coordinator=10.1.2.3:8476", "-m", "bertjax.pretrain",
                   "--config=configs/bert_base.py", "--workdir=gs://my-bucket/bert-base",
                   "--config.optim.lr=1e-4", TRICKY]


@pytest.mark.parametrize("drop, needle", [("--tpu=", "--tpu"), ("--zone=", "--zone"),
                                          ("--workdir=", "--workdir")])
def test_tpu_missing_argument_is_one_line(drop, needle):
    args = [a for a in TPU_ARGS if not a.startswith(drop)]
    line = one_line_error(run(TPU, *args, "--dry-run"))
    assert "missing" in line and needle in line


def test_tpu_unknown_argument_is_one_line():
    line = one_line_error(run(TPU, *TPU_ARGS, "--config.optim.lr=1e-4", "--dry-run"))
    assert "--config.optim.lr=1e-4" in line and "after '--'" in line


def test_tpu_local_workdir_warns_but_runs():
    args = [a for a in TPU_ARGS if not a.startswith("--workdir")] + ["--workdir=runs/x"]
    r = run(TPU, *args, "--dry-run")
    assert r.returncode == 0 and "not gs://" in r.stderr


# --- SLURM ----------------------------------------------------------------------------------

def test_sbatch_header_comes_before_any_command():
    """sbatch stops reading #SBATCH lines at the first command."""
    lines = open(SLURM).read().splitlines()
    first_cmd = next(i for i, line in enumerate(lines[1:], 1) if line and not line.startswith("#"))
    sbatch = {line.split("=")[0] for line in lines[:first_cmd] if line.startswith("#SBATCH")}
    assert {"#SBATCH --nodes", "#SBATCH --ntasks-per-node", "#SBATCH --gpus-per-node",
            "#SBATCH --time"} <= sbatch
    assert not any(line.startswith("#SBATCH") for line in lines[first_cmd:])


def test_slurm_dry_run_outside_slurm_uses_header_values():
    r = run(SLURM, env={"DRY_RUN": "1"})
    assert r.returncode == 0, r.stderr
    summary, srun = r.stdout.splitlines()
    assert summary == "# nodes=2 tasks-per-node=8: one process per GPU"
    assert srun.startswith("srun --kill-on-bad-exit=1 --gpu-bind=none")
    for piece in ("-m bertjax.pretrain", "--config=configs/bert_base.py", "--workdir="):
        assert piece in srun
    assert "coordinator" not in srun and "CUDA_VISIBLE_DEVICES" not in r.stdout


def test_slurm_outside_slurm_without_dry_run_is_one_line():
    line = one_line_error(run(SLURM))
    assert "not inside a SLURM job" in line and "sbatch" in line


def _fake_srun(tmp_path) -> tuple[str, str]:
    fakes = tmp_path / "bin"
    fakes.mkdir()
    out = tmp_path / "srun.out"
    executable(fakes / "srun", f"""#!/usr/bin/env bash
{{ echo "ids=${{JAX_LOCAL_DEVICE_IDS-unset}}"; printf '%s\\n' "$@"; }} > {out}
""")
    return str(fakes), str(out)


def _slurm_env(tasks_per_node: int, gpus: int, **more) -> dict:
    return {"SLURM_JOB_ID": "42", "SLURM_JOB_NUM_NODES": "2", "SLURM_SUBMIT_DIR": ROOT,
            "SLURM_NTASKS_PER_NODE": str(tasks_per_node), "SLURM_GPUS_ON_NODE": str(gpus),
            "SLURM_CPUS_PER_TASK": "6", "PYTHON": "python3", **more}


def test_slurm_one_process_per_gpu_lets_jax_pick_the_gpu(tmp_path):
    fakes, out = _fake_srun(tmp_path)
    r = run(SLURM, "--config.optim.lr=1e-4", TRICKY, path=fakes,
            env=_slurm_env(8, 8, CONFIG="configs/bert_large.py", WORKDIR="/shared/runs/l"))
    assert r.returncode == 0, r.stderr
    got = open(out).read().splitlines()
    # No JAX_LOCAL_DEVICE_IDS: JAX's SLURM detection gives task i the GPU SLURM_LOCALID.
    assert got == ["ids=unset", "--kill-on-bad-exit=1", "--gpu-bind=none", "--cpus-per-task=6",
                   "python3", "-m", "bertjax.pretrain", "--config=configs/bert_large.py",
                   "--workdir=/shared/runs/l", "--config.optim.lr=1e-4", TRICKY]


def test_slurm_one_process_per_node_sees_every_gpu(tmp_path):
    fakes, out = _fake_srun(tmp_path)
    r = run(SLURM, path=fakes, env=_slurm_env(1, 4))
    assert r.returncode == 0, r.stderr
    assert open(out).read().splitlines()[0] == "ids=0,1,2,3"
    dry = run(SLURM, env=_slurm_env(1, 4, DRY_RUN="1"))
    assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3" in dry.stdout.splitlines()


def test_slurm_tasks_that_match_neither_gpus_nor_nodes_are_refused():
    # a shared-looking workdir, so no node-local warning joins the error wherever CI runs
    line = one_line_error(run(SLURM, env=_slurm_env(3, 8, DRY_RUN="1",
                                                    WORKDIR="/shared/runs/x")))
    assert "3 tasks per node" in line and "--ntasks-per-node=8" in line


def test_slurm_outside_the_checkout_is_one_line():
    line = one_line_error(run(SLURM, env={"DRY_RUN": "1", "REPO_DIR": "/nonexistent"}))
    assert "REPO_DIR" in line


# --- Kubernetes -----------------------------------------------------------------------------

def _jobset(text: str) -> dict:
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert len(docs) == 1 and docs[0]["kind"] == "JobSet"
    assert docs[0]["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
    return docs[0]


def _container(jobset: dict) -> tuple[dict, dict]:
    rjob = jobset["spec"]["replicatedJobs"][0]
    job = rjob["template"]["spec"]
    return job, job["template"]["spec"]["containers"][0]


def test_k8s_template_parses_and_names_the_coordinator_env():
    jobset = _jobset(open(TEMPLATE).read())
    _, c = _container(jobset)
    env = {e["name"]: e for e in c["env"]}
    assert set(env) == {"BERTJAX_COORDINATOR", "BERTJAX_NUM_PROCESSES", "BERTJAX_PROCESS_ID"}


def test_k8s_render_fills_every_placeholder():
    r = run(RENDER, "--image=reg.example/bertjax:v1", "--replicas=4", "--gpus=8",
            "--config=configs/bert_base.py", "--workdir=gs://my-bucket/bert-base", "--",
            "--config.optim.lr=1e-4", TRICKY)
    assert r.returncode == 0, r.stderr
    assert "${" not in r.stdout
    jobset = _jobset(r.stdout)
    assert jobset["metadata"]["name"] == "bertjax"
    assert jobset["spec"]["failurePolicy"]["maxRestarts"] >= 1
    assert jobset["spec"]["network"]["enableDNSHostnames"] is True
    job, c = _container(jobset)
    assert jobset["spec"]["replicatedJobs"][0]["replicas"] == 1
    assert job["completionMode"] == "Indexed" and job["parallelism"] == job["completions"] == 4
    assert c["image"] == "reg.example/bertjax:v1"
    assert c["command"] == ["python", "-m", "bertjax.pretrain"]
    assert c["args"] == ["--config=configs/bert_base.py", "--workdir=gs://my-bucket/bert-base",
                         "--config.optim.lr=1e-4", TRICKY]
    env = {e["name"]: e for e in c["env"]}
    # pod 0 of Job 0 of replicated job "workers", under the JobSet's headless service
    assert env["BERTJAX_COORDINATOR"]["value"] == "bertjax-workers-0-0.bertjax:8476"
    assert env["BERTJAX_NUM_PROCESSES"]["value"] == "4"
    assert (env["BERTJAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
            == "metadata.annotations['batch.kubernetes.io/job-completion-index']")
    assert c["ports"][0]["containerPort"] == 8476
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 8


def test_k8s_render_from_env_with_another_name_and_port():
    r = run(RENDER, env={"IMAGE": "img", "REPLICAS": "2", "WORKDIR": "gs://b/r",
                         "NAME": "bert-p2", "PORT": "1234", "GPUS_PER_POD": "4"})
    assert r.returncode == 0, r.stderr
    job, c = _container(_jobset(r.stdout))
    env = {e["name"]: e for e in c["env"]}
    assert env["BERTJAX_COORDINATOR"]["value"] == "bert-p2-workers-0-0.bert-p2:1234"
    assert job["parallelism"] == 2 and c["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert c["args"] == ["--config=configs/bert_base.py", "--workdir=gs://b/r"]


@pytest.mark.parametrize("args, needle", [
    (("--replicas=2", "--workdir=gs://b/r"), "--image"),
    (("--image=i", "--workdir=gs://b/r"), "--replicas"),
    (("--image=i", "--replicas=2"), "--workdir"),
    (("--image=i", "--replicas=two", "--workdir=gs://b/r"), "--replicas=two"),
    (("--image=i", "--replicas=2", "--workdir=gs://b/r", "--name=Bert_1"), "--name=Bert_1"),
    (("--image=i", "--replicas=2", "--workdir=gs://b/r", "--bogus"), "--bogus"),
])
def test_k8s_render_bad_arguments_are_one_line(args, needle):
    assert needle in one_line_error(run(RENDER, *args))


def test_k8s_render_refuses_a_placeholder_it_does_not_know(tmp_path):
    (tmp_path / "launch").mkdir()
    shutil.copy(RENDER, tmp_path / "launch")
    text = open(TEMPLATE).read().replace("app: bertjax", "app: ${TEAM}")
    (tmp_path / "launch" / "k8s_jobset.yaml").write_text(text)
    line = one_line_error(run(str(tmp_path / "launch" / "k8s_render.sh"), "--image=i",
                              "--replicas=2", "--workdir=gs://b/r"))
    assert "${TEAM}" in line


def test_docs_show_the_current_dry_run_output():
    """docs/pods.md pastes the TPU and Kubernetes dry runs; they must not drift from the code."""
    docs = open(os.path.join(ROOT, "docs", "pods.md")).read()
    tpu = run(TPU, *TPU_ARGS, "--setup", "--dry-run", "--", "--config.optim.lr=1e-4").stdout
    assert tpu in docs
    k8s = run(RENDER, "--image=us-docker.pkg.dev/my-proj/bertjax/bertjax:v1", "--replicas=4",
              "--gpus=8", "--config=configs/bert_base.py",
              "--workdir=gs://my-bucket/bert-base").stdout
    body = re.sub(r"^#.*\n", "", k8s, flags=re.M)  # docs paste the manifest without its header
    assert body in docs
