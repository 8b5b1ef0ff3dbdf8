"""The pod launchers: TPU VM slice (gcloud), SLURM (srun, requeue) and Kubernetes (JobSet).

Nothing here reaches a cloud or a cluster. The TPU launcher runs against a fake `gcloud` on PATH
that plays a slice of two workers (two home directories): it answers `describe`, keeps the
queued resource's state, copies `scp`'d files into each home and runs every `ssh --command` in
a local shell per worker, so setup (tarball, venv, pinned install), the run (log appended,
stale TPU holders ended, the libtpu lock removed) and the relaunch after a preemption run for
real, with a fake Python. SLURM runs against fake `srun`, `scancel` and `scontrol`. The JobSet
manifests are validated against the Kubernetes Job schema (the `kubernetes` client's strict
models) and the JobSet v1alpha2 fields. Only bash, PyYAML and kubernetes are needed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import time
from typing import Literal, Optional

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(ROOT, "launch", "tpu_pod.sh")
WORKER = os.path.join(ROOT, "launch", "tpu_worker.sh")
SLURM = os.path.join(ROOT, "launch", "slurm.sbatch")
RENDER = os.path.join(ROOT, "launch", "k8s_render.sh")
TEMPLATES = [os.path.join(ROOT, "launch", n) for n in ("k8s_jobset.yaml", "k8s_jobset_tpu.yaml")]

# A flag that only survives if every layer of quoting is right.
TRICKY = """--config.note=it's "a b" $HOME & | \\ done"""


def run(script: str, *args: str, env: dict | None = None, path: str | None = None,
        timeout: int = 60):
    """Runs a launcher with a clean environment (none of the caller's SLURM_* or TPU_NAME)."""
    base = {"PATH": (path + os.pathsep if path else "") + os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    base.update(env or {})
    return subprocess.run(["bash", script, *args], env=base, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


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


@pytest.mark.parametrize("script", [TPU, WORKER, SLURM, RENDER])
def test_scripts_are_valid_bash(script):
    assert subprocess.run(["bash", "-n", script]).returncode == 0


# --- TPU VM slice: the commands -----------------------------------------------------------

TPU_ARGS = ("--tpu=my-pod", "--zone=us-central2-b", "--project=my-proj",
            "--workdir=gs://my-bucket/bert-base", "--config=configs/bert_base.py")
DOCS_TPU = (*TPU_ARGS, "--create=v5litepod-16", "--runtime=v2-alpha-tpuv5-lite", "--spot",
            "--relaunch", "--dry-run", "--", "--config.optim.lr=1e-4")


def _commands(out: str) -> list[str]:
    return [line for line in out.splitlines() if not line.startswith("#")]


def test_tpu_dry_run_starts_the_worker_script_without_a_coordinator():
    r = run(TPU, *TPU_ARGS, "--dry-run", "--", "--config.optim.lr=1e-4")
    assert r.returncode == 0 and r.stderr == "", r.stderr  # gs:// workdir: no warning
    (ssh,) = _commands(r.stdout)
    assert ssh.startswith("gcloud compute tpus tpu-vm ssh my-pod ")
    for piece in ("--zone=us-central2-b", "--project=my-proj", "--worker=all",
                  "bash bertjax/launch/tpu_worker.sh run -- -m bertjax.pretrain",
                  "--config=configs/bert_base.py", "--workdir=gs://my-bucket/bert-base",
                  "--config.optim.lr=1e-4"):
        assert piece in ssh, piece
    # JAX reads the slice from the TPU VM metadata; no IP lookup, no port of the TPU runtime's
    assert "describe" not in r.stdout and "COORDINATOR" not in ssh and "8476" not in r.stdout


def test_tpu_create_setup_and_relaunch_in_order():
    cmds = _commands(run(TPU, *DOCS_TPU).stdout)
    assert [c.split(" --")[0] for c in cmds] == [
        "gcloud compute tpus queued-resources describe my-pod",
        "gcloud compute tpus queued-resources create my-pod",
        "git -C . ls-files -z",
        "gcloud compute tpus tpu-vm scp /tmp/bertjax-src.tar.gz my-pod:bertjax-src.tar.gz",
        "gcloud compute tpus tpu-vm ssh my-pod", "gcloud compute tpus tpu-vm ssh my-pod",
        "gcloud compute tpus tpu-vm describe my-pod"]
    create, setup, start = cmds[1], cmds[4], cmds[5]
    for piece in ("--node-id=my-pod", "--accelerator-type=v5litepod-16",
                  "--runtime-version=v2-alpha-tpuv5-lite", "--spot"):
        assert piece in create
    assert "tar -xzf bertjax-src.tar.gz" in setup and "tpu_worker.sh setup" in setup
    assert "git pull" not in setup and "tpu_worker.sh run --" in start


def test_tpu_env_vars_and_dry_run_env_equal_flags():
    flags = run(TPU, *TPU_ARGS, "--setup", "--dry-run")
    env = run(TPU, env={"TPU_NAME": "my-pod", "ZONE": "us-central2-b", "PROJECT": "my-proj",
                        "WORKDIR": "gs://my-bucket/bert-base", "CONFIG": "configs/bert_base.py",
                        "SETUP": "1", "DRY_RUN": "1"})
    assert env.returncode == 0 and env.stdout == flags.stdout


def test_tpu_detach_and_explicit_coordinator():
    r = run(TPU, *TPU_ARGS, "--detach", "--coordinator=10.0.0.2:1234", "--dry-run")
    (ssh,) = _commands(r.stdout)
    assert "BERTJAX_COORDINATOR=10.0.0.2:1234 bash bertjax/launch/tpu_worker.sh run --detach" \
        in ssh


@pytest.mark.parametrize("args, needle", [
    (("--zone=z", "--workdir=gs://b/r"), "missing --tpu"),
    (("--tpu=t", "--workdir=gs://b/r"), "missing --zone"),
    (("--tpu=t", "--zone=z"), "missing --workdir"),
    (("--tpu=t", "--zone=z", "--workdir=gs://b/r", "--config.optim.lr=1e-4"), "after '--'"),
    (("--tpu=t", "--zone=z", "--workdir=gs://b/r", "--create=v5litepod-16"), "--runtime"),
    (("--tpu=t", "--zone=z", "--workdir=gs://b/r", "--relaunch", "--detach"), "--detach"),
    (("--tpu=t", "--zone=z", "--workdir=gs://b/r", "--relaunch=many"), "--relaunch=many"),
])
def test_tpu_bad_arguments_are_one_line(args, needle):
    assert needle in one_line_error(run(TPU, *args, "--dry-run"))


def test_tpu_local_workdir_warns_but_runs():
    args = [a for a in TPU_ARGS if not a.startswith("--workdir")] + ["--workdir=runs/x"]
    r = run(TPU, *args, "--dry-run")
    assert r.returncode == 0 and "not gs://" in r.stderr


# --- TPU VM slice: a fake slice of two workers ---------------------------------------------

FAKE_GCLOUD = r"""#!/usr/bin/env bash
# A slice of two TPU VM workers (homes $D/w0 and $D/w1) and its queued resource.
D=__DIR__
echo "$*" >> "$D/calls"
case "$*" in
  "compute tpus queued-resources describe"*)
    head -n 1 "$D/qr"
    if (( $(wc -l < "$D/qr") > 1 )); then sed -i 1d "$D/qr"; fi ;;
  "compute tpus queued-resources create"*) printf 'PROVISIONING\nACTIVE\n' > "$D/qr"
    echo READY > "$D/tpu" ;;
  "compute tpus queued-resources delete"*) printf '\n' > "$D/qr" ;;
  "compute tpus tpu-vm describe"*) cat "$D/tpu" ;;
  "compute tpus tpu-vm scp"*)
    for w in 0 1; do cp "$5" "$D/w$w/${6#*:}"; done ;;
  "compute tpus tpu-vm ssh"*)
    for a; do [[ $a == --command=* ]] && cmd="${a#--command=}"; done
    status=0
    for w in 0 1; do
      (cd "$D/w$w" && HOME="$D/w$w" BERTJAX_WORKER=$w PATH="$D/bin:$PATH" bash -c "$cmd") ||
        status=$?
    done
    exit $status ;;
  *) echo "fake gcloud: unexpected $*" >&2; exit 9 ;;
esac
"""

# Python >= 3.11 as the worker's setup finds it: makes a venv of itself, records pip installs
# and runs (argv, coordinator), and plays a preemption when $D/preempt exists.
FAKE_PYTHON = r"""#!/usr/bin/env bash
D=__DIR__
case "$1" in
  -c) exit 0 ;;
  -m) case "$2" in
        venv) mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; exit 0 ;;
        pip) echo "$HOME ${*:3}" >> "$D/pip"; exit 0 ;;
      esac ;;
esac
{ echo "run home=$HOME coordinator=$BERTJAX_COORDINATOR"; printf '%s\n' "$@"; } >> "$D/runs"
echo "training on worker $BERTJAX_WORKER"
if [[ -e $D/preempt ]]; then  # the slice goes away under the run
  [[ $BERTJAX_WORKER == 1 ]] && rm "$D/preempt"
  echo PREEMPTED > "$D/tpu"; printf 'SUSPENDING\nSUSPENDED\n' > "$D/qr"
  exit 1
fi
"""


@pytest.fixture
def slice_(tmp_path):
    d = tmp_path / "slice"
    for sub in ("w0", "w1", "bin"):
        (d / sub).mkdir(parents=True)
    executable(d / "gcloud", FAKE_GCLOUD.replace("__DIR__", str(d)))
    executable(d / "bin" / "python3.13", FAKE_PYTHON.replace("__DIR__", str(d)))
    (d / "qr").write_text("\n")  # no queued resource yet
    (d / "tpu").write_text("\n")
    return d


def _tpu_real(d, *args):
    return run(TPU, *TPU_ARGS, *args, "--", "--config.optim.lr=1e-4", TRICKY, path=str(d),
               env={"POLL_S": "0", "TMPDIR": str(d)}, timeout=120)


def _runs(d) -> list[list[str]]:
    text = (d / "runs").read_text() if (d / "runs").exists() else ""
    return [block.splitlines() for block in text.split("run ")[1:]]


def test_tpu_from_nothing_creates_copies_sets_up_and_runs_on_every_worker(slice_):
    d = slice_
    r = _tpu_real(d, "--create=v5litepod-16", "--runtime=v2-alpha-tpuv5-lite", "--spot")
    assert r.returncode == 0, r.stderr
    calls = (d / "calls").read_text().splitlines()
    assert [" ".join(c.split()[:4]) for c in calls] == [
        "compute tpus queued-resources describe", "compute tpus queued-resources create",
        "compute tpus queued-resources describe", "compute tpus queued-resources describe",
        "compute tpus tpu-vm scp", "compute tpus tpu-vm ssh", "compute tpus tpu-vm ssh"]
    assert re.match(rf"compute tpus tpu-vm scp {d}/bertjax-src-\w+\.tar\.gz "
                    "my-pod:bertjax-src.tar.gz ", calls[4]), calls[4]
    for w in ("w0", "w1"):
        home = d / w
        # the checkout arrived as files, not a git clone: the code and the pins are there
        assert (home / "bertjax" / "bertjax" / "loop.py").exists()
        assert (home / "bertjax" / "constraints.txt").read_text() == \
            open(os.path.join(ROOT, "constraints.txt")).read()
        assert not (home / "bertjax" / ".git").exists()
        assert (home / "bertjax-venv" / "bin" / "python").exists()
        log = (home / "bertjax-logs" / f"worker-{w[1]}.log").read_text()
        assert log.count("=== ") == 1 and f"training on worker {w[1]}" in log
    pip = (d / "pip").read_text().splitlines()
    assert len(pip) == 2  # once per worker
    assert pip[0].endswith("install -q -c constraints.txt -r requirements.txt "
                           "-r requirements-tpu.txt")
    runs = _runs(d)
    assert len(runs) == 2
    for i, got in enumerate(runs):
        assert got == [f"home={d}/w{i} coordinator=auto", "-m", "bertjax.pretrain",
                       "--config=configs/bert_base.py", "--workdir=gs://my-bucket/bert-base",
                       "--config.optim.lr=1e-4", TRICKY]
    assert "[worker 0] training on worker 0" in r.stdout

    # Again on the same slice: the requirements did not change, so nothing is installed; the
    # logs are appended to, not replaced.
    r = _tpu_real(d, "--setup")
    assert r.returncode == 0, r.stderr
    assert len((d / "pip").read_text().splitlines()) == 2
    log = (d / "w1" / "bertjax-logs" / "worker-1.log").read_text()
    assert log.count("=== ") == 2 and log.count("training on worker 1") == 2


def test_tpu_relaunch_recreates_a_preempted_spot_slice_and_runs_again(slice_):
    d = slice_
    (d / "preempt").touch()
    r = _tpu_real(d, "--create=v5litepod-16", "--runtime=v2-alpha-tpuv5-lite", "--spot",
                  "--relaunch=3")
    assert r.returncode == 0, r.stderr
    calls = [" ".join(c.split()[:4]) for c in (d / "calls").read_text().splitlines()]
    assert calls.count("compute tpus queued-resources create") == 2
    assert calls.count("compute tpus queued-resources delete") == 1
    assert calls.count("compute tpus tpu-vm scp") == 2  # the new slice is set up again
    assert calls.index("compute tpus queued-resources delete") < \
        len(calls) - 1 - calls[::-1].index("compute tpus queued-resources create")
    assert len(_runs(d)) == 4  # two workers, twice
    assert "relaunch 1 of 3" in r.stderr and "is PREEMPTED" in r.stderr
    log = (d / "w0" / "bertjax-logs" / "worker-0.log").read_text()
    assert log.count("=== ") == 2


def test_tpu_relaunch_gives_up_after_n_and_without_create(slice_):
    d = slice_
    (d / "tpu").write_text("READY\n")
    (d / "qr").write_text("ACTIVE\n")
    for w in ("w0", "w1"):  # set up earlier
        (d / w / "bertjax").symlink_to(ROOT)
    fails = executable(d / "failing_python", "#!/usr/bin/env bash\necho boom; exit 1\n")
    r = run(TPU, *TPU_ARGS, "--relaunch=2", path=str(d), env={"POLL_S": "0",
                                                              "PYTHON": fails}, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith(
        "the run ended with status 1 after 2 relaunches; rerun this command to resume from "
        "the last checkpoint")
    (d / "tpu").write_text("PREEMPTED\n")
    line = run(TPU, *TPU_ARGS, "--relaunch=2", path=str(d), env={"POLL_S": "0",
                                                                 "PYTHON": fails}).stderr
    assert "slice my-pod is PREEMPTED and there is no --create" in line


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_tpu_worker_ends_stale_tpu_holders_and_the_lock_then_appends_the_log(tmp_path):
    dev, home = tmp_path / "dev", tmp_path / "home"
    (dev / "vfio").mkdir(parents=True)
    (dev / "accel0").touch()
    (dev / "vfio" / "0").touch()
    lock = tmp_path / "libtpu_lockfile"
    lock.touch()
    home.mkdir()
    # a stale run holding a chip, not a child of this test (as a crashed run's leftover is not)
    holder = int(subprocess.run(["bash", "-c", f"sleep 300 < {dev}/accel0 > /dev/null 2>&1 & "
                                 "echo $!"], capture_output=True, text=True).stdout)
    python = executable(tmp_path / "python", "#!/usr/bin/env bash\necho ran \"$@\"\n")
    env = {"HOME": str(home), "BERTJAX_DEV": str(dev), "BERTJAX_TPU_LOCKFILE": str(lock),
           "BERTJAX_WORKER": "3", "BERTJAX_PYTHON": python}
    try:
        if shutil.which("lsof") is None and shutil.which("fuser") is None:
            pytest.skip("neither lsof nor fuser here to find the chips' holders")
        r = run(WORKER, "run", "--", "-m", "bertjax.pretrain", "--x=1", env=env)
        assert r.returncode == 0, r.stderr
        assert not _running(holder)  # ended by the worker script
    finally:
        if _running(holder):
            os.kill(holder, signal.SIGKILL)
    assert not lock.exists()
    assert f"processes {holder} hold the TPU chips" in r.stderr.replace("  ", " ")
    assert "[worker 3] ran -m bertjax.pretrain --x=1" in r.stdout
    assert r.stdout.rstrip().endswith("exit status 0 (log: ~/bertjax-logs/worker-3.log)")
    r = run(WORKER, "run", "--", "-m", "bertjax.pretrain", "--x=2", env=env)
    log = (home / "bertjax-logs" / "worker-3.log").read_text()
    assert log.count("=== ") == 2 and "ran -m bertjax.pretrain --x=1" in log \
        and "ran -m bertjax.pretrain --x=2" in log


def test_tpu_worker_stop_sends_sigterm_and_a_detached_run_survives_its_shell(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    saved = tmp_path / "saved"
    python = executable(tmp_path / "python", f"""#!/usr/bin/env bash
trap 'echo "saved at SIGTERM" > {saved}; exit 0' TERM
echo started
while :; do sleep 0.1; done
""")
    env = {"HOME": str(home), "BERTJAX_DEV": str(tmp_path / "nodev"), "BERTJAX_WORKER": "0",
           "BERTJAX_PYTHON": python, "BERTJAX_TPU_LOCKFILE": str(tmp_path / "lock")}
    r = run(WORKER, "run", "--detach", "--", "-m", "bertjax.pretrain", env=env)
    assert r.returncode == 0 and "started; log in ~/bertjax-logs/worker-0.log" in r.stdout
    pid = int((home / "bertjax-logs" / "run.pid").read_text())
    try:
        os.kill(pid, 0)  # still running after the script returned
        stop = run(WORKER, "stop", env=env)
        assert stop.returncode == 0 and "SIGTERM" in stop.stderr
        deadline = time.time() + 30
        while not (home / "bertjax-logs" / "run.status").exists() and time.time() < deadline:
            time.sleep(0.1)
        assert saved.read_text() == "saved at SIGTERM\n"
        assert (home / "bertjax-logs" / "run.status").read_text().strip() == "0"
    finally:  # a failed check must not leave the detached stand-in running
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_tpu_worker_setup_refuses_a_copy_without_the_pins(tmp_path, slice_):
    code = tmp_path / "code" / "launch"
    code.mkdir(parents=True)
    shutil.copy(WORKER, code)
    line = one_line_error(run(str(code / "tpu_worker.sh"), "setup",
                              env={"HOME": str(tmp_path)}, path=str(slice_ / "bin")))
    assert "constraints.txt is missing" in line


# --- SLURM ----------------------------------------------------------------------------------

def test_sbatch_header_comes_before_any_command():
    """sbatch stops reading #SBATCH lines at the first command."""
    lines = open(SLURM).read().splitlines()
    first_cmd = next(i for i, line in enumerate(lines[1:], 1) if line and not line.startswith("#"))
    sbatch = {line.split("=")[0] for line in lines[:first_cmd] if line.startswith("#SBATCH")}
    assert {"#SBATCH --nodes", "#SBATCH --ntasks-per-node", "#SBATCH --gpus-per-node",
            "#SBATCH --time", "#SBATCH --exclusive", "#SBATCH --mem", "#SBATCH --requeue",
            "#SBATCH --open-mode", "#SBATCH --signal"} <= sbatch
    assert "#SBATCH --mem=0" in lines and "#SBATCH --open-mode=append" in lines
    # the batch shell gets the warning (B:), so it can requeue after the tasks saved
    assert "#SBATCH --signal=B:USR1@300" in lines
    assert not any(line.startswith("#SBATCH") for line in lines[first_cmd:])


def test_slurm_dry_run_outside_slurm_uses_header_values():
    r = run(SLURM, env={"DRY_RUN": "1"})
    assert r.returncode == 0, r.stderr
    summary, srun = r.stdout.splitlines()[:2]
    assert summary == "# nodes=2 tasks-per-node=8: one process per GPU"
    assert srun.startswith("srun --kill-on-bad-exit=1 --gpu-bind=none "
                           f"--output={ROOT}/logs/%x-%j-task%t.log --open-mode=append")
    for piece in ("-m bertjax.pretrain", "--config=configs/bert_base.py", "--workdir="):
        assert piece in srun
    assert "coordinator" not in srun and "CUDA_VISIBLE_DEVICES" not in r.stdout


def test_slurm_outside_slurm_without_dry_run_is_one_line():
    line = one_line_error(run(SLURM))
    assert "not inside a SLURM job" in line and "sbatch" in line


def _fakes(tmp_path, srun_body: str) -> tuple[str, str]:
    fakes = tmp_path / "bin"
    fakes.mkdir()
    out = tmp_path / "slurm.out"
    executable(fakes / "srun", f"#!/usr/bin/env bash\n{srun_body}\n")
    executable(fakes / "scancel", f'#!/usr/bin/env bash\necho "scancel $*" >> {out}\n'
               f'kill -TERM "$(cat {tmp_path}/srun.pid)"\n')
    executable(fakes / "scontrol", f'#!/usr/bin/env bash\necho "scontrol $*" >> {out}\n')
    return str(fakes), str(out)


def _slurm_env(tmp_path, tasks_per_node: int, gpus: int, **more) -> dict:
    return {"SLURM_JOB_ID": "42", "SLURM_JOB_NUM_NODES": "2", "SLURM_SUBMIT_DIR": ROOT,
            "SLURM_NTASKS_PER_NODE": str(tasks_per_node),
            "SLURM_GPUS_ON_NODE": str(gpus), "SLURM_CPUS_PER_TASK": "6", "PYTHON": "python3",
            "LOG_DIR": str(tmp_path / "logs"), **more}


RECORD_SRUN = 'echo "ids=${JAX_LOCAL_DEVICE_IDS-unset}" > __OUT__; printf "%s\\n" "$@" >> __OUT__'


def test_slurm_one_process_per_gpu_lets_jax_pick_the_gpu(tmp_path):
    fakes, out = _fakes(tmp_path, RECORD_SRUN.replace("__OUT__", str(tmp_path / "argv")))
    r = run(SLURM, "--config.optim.lr=1e-4", TRICKY, path=fakes,
            env=_slurm_env(tmp_path, 8, 8, CONFIG="configs/bert_large.py",
                           WORKDIR="/shared/runs/l"))
    assert r.returncode == 0, r.stderr
    got = (tmp_path / "argv").read_text().splitlines()
    # No JAX_LOCAL_DEVICE_IDS: JAX's SLURM detection gives task i the GPU SLURM_LOCALID.
    assert got == ["ids=unset", "--kill-on-bad-exit=1", "--gpu-bind=none",
                   f"--output={tmp_path}/logs/%x-%j-task%t.log", "--open-mode=append",
                   "--cpus-per-task=6", "python3", "-m", "bertjax.pretrain",
                   "--config=configs/bert_large.py", "--workdir=/shared/runs/l",
                   "--config.optim.lr=1e-4", TRICKY]
    assert (tmp_path / "logs").is_dir()
    assert not os.path.exists(out)  # finished by itself: nothing signalled, nothing requeued


def test_slurm_one_process_per_node_sees_every_gpu(tmp_path):
    fakes, _ = _fakes(tmp_path, RECORD_SRUN.replace("__OUT__", str(tmp_path / "argv")))
    r = run(SLURM, path=fakes, env=_slurm_env(tmp_path, 1, 4))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "argv").read_text().splitlines()[0] == "ids=0,1,2,3"
    dry = run(SLURM, env=_slurm_env(tmp_path, 1, 4, DRY_RUN="1"))
    assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3" in dry.stdout.splitlines()


# srun as the tasks behave: SLURM warns the batch shell (USR1) near the time limit, the tasks
# get SIGTERM (through scancel), save and exit 0.
WARNED_SRUN = """echo $$ > __DIR__/srun.pid
trap 'echo saved >> __DIR__/slurm.out; exit 0' TERM
kill -USR1 $PPID
for i in $(seq 300); do sleep 0.1; done
exit 7"""


@pytest.mark.parametrize("restarts, requeued", [("0", True), ("50", False)])
def test_slurm_time_limit_saves_then_requeues(tmp_path, restarts, requeued):
    fakes, out = _fakes(tmp_path, WARNED_SRUN.replace("__DIR__", str(tmp_path)))
    r = run(SLURM, path=fakes, env=_slurm_env(tmp_path, 8, 8, SLURM_RESTART_COUNT=restarts))
    assert r.returncode == 0, r.stderr
    got = open(out).read().splitlines()
    assert got[:2] == ["scancel --signal=TERM 42", "saved"]
    assert got[2:] == (["scontrol requeue 42"] if requeued else [])
    assert ("requeued to resume" in r.stderr) == requeued
    assert ("MAX_REQUEUES=50 reached" in r.stderr) == (not requeued)


def test_slurm_a_failed_run_is_not_requeued(tmp_path):
    fakes, out = _fakes(tmp_path, "exit 3")
    r = run(SLURM, path=fakes, env=_slurm_env(tmp_path, 8, 8))
    assert r.returncode == 3 and not os.path.exists(out)


def test_slurm_tasks_that_match_neither_gpus_nor_nodes_are_refused(tmp_path):
    # a shared-looking workdir, so no node-local warning joins the error wherever CI runs
    line = one_line_error(run(SLURM, env=_slurm_env(tmp_path, 3, 8, DRY_RUN="1",
                                                    WORKDIR="/shared/runs/x")))
    assert "3 tasks per node" in line and "--ntasks-per-node=8" in line


def test_slurm_outside_the_checkout_is_one_line():
    line = one_line_error(run(SLURM, env={"DRY_RUN": "1", "REPO_DIR": "/nonexistent"}))
    assert "REPO_DIR" in line


# --- Kubernetes -----------------------------------------------------------------------------

def _jobset_model():
    """The JobSet v1alpha2 fields (jobset.x-k8s.io, api/jobset/v1alpha2) as strict models whose
    Job template is the Kubernetes client's own V1JobTemplateSpec: unknown keys, wrong types
    and missing required fields are errors at every level."""
    from kubernetes import client as k8s
    from pydantic import BaseModel, ConfigDict, Field

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid", populate_by_name=True)

    class Rule(Strict):
        name: str
        action: Literal["FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts",
                        "RestartJob", "RestartJobAndIgnoreMaxRestarts"]
        on_job_failure_reasons: Optional[list[str]] = Field(None, alias="onJobFailureReasons")
        on_job_failure_message_patterns: Optional[list[str]] = Field(
            None, alias="onJobFailureMessagePatterns")
        target_replicated_jobs: Optional[list[str]] = Field(None, alias="targetReplicatedJobs")

    class FailurePolicy(Strict):
        max_restarts: Optional[int] = Field(None, alias="maxRestarts", ge=0)
        restart_strategy: Optional[Literal["Recreate", "BlockingRecreate", "InPlaceRestart"]] = \
            Field(None, alias="restartStrategy")
        rules: Optional[list[Rule]] = None

    class Network(Strict):
        enable_dns_hostnames: Optional[bool] = Field(None, alias="enableDNSHostnames")
        subdomain: Optional[str] = None
        publish_not_ready_addresses: Optional[bool] = Field(None,
                                                            alias="publishNotReadyAddresses")

    class ReplicatedJob(Strict):
        name: str
        group_name: Optional[str] = Field(None, alias="groupName")
        template: k8s.V1JobTemplateSpec
        replicas: Optional[int] = Field(None, ge=0)

    class Spec(Strict):
        replicated_jobs: list[ReplicatedJob] = Field(alias="replicatedJobs")
        network: Optional[Network] = None
        failure_policy: Optional[FailurePolicy] = Field(None, alias="failurePolicy")
        suspend: Optional[bool] = None
        ttl_seconds_after_finished: Optional[int] = Field(None, alias="ttlSecondsAfterFinished")

    class JobSet(Strict):
        api_version: Literal["jobset.x-k8s.io/v1alpha2"] = Field(alias="apiVersion")
        kind: Literal["JobSet"]
        metadata: k8s.V1ObjectMeta
        spec: Spec

    return JobSet


def _render(*args, env=None) -> tuple[dict, object]:
    r = run(RENDER, *args, env=env)
    assert r.returncode == 0, r.stderr
    assert "${" not in r.stdout
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert len(docs) == 1
    return docs[0], _jobset_model().model_validate(docs[0])


def _pod(jobset: dict) -> tuple[dict, dict, dict]:
    job = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]
    pod = job["template"]["spec"]
    return job, pod, pod["containers"][0]


GPU_ARGS = ("--image=reg.example/bertjax:v1", "--replicas=4", "--gpus=8",
            "--config=configs/bert_base.py", "--workdir=gs://my-bucket/bert-base")
TPU_RENDER = ("--tpu=tpu-v5-lite-podslice:4x4", "--image=reg.example/bertjax:v1",
              "--config=configs/bert_base.py", "--workdir=gs://my-bucket/bert-base")


def test_the_schema_check_can_fail():
    from pydantic import ValidationError
    breaks = [lambda js, pod, c: c.update(bogus=1),  # a key the Container schema lacks
              lambda js, pod, c: pod.update(terminationGracePeriodSeconds="long"),
              lambda js, pod, c: js["spec"]["failurePolicy"]["rules"][0].update(action="Retry"),
              lambda js, pod, c: js["spec"]["replicatedJobs"][0].pop("template"),
              lambda js, pod, c: js["spec"].update(maxRestarts=3)]  # misplaced
    for break_it in breaks:
        jobset, _ = _render(*GPU_ARGS)
        break_it(jobset, *_pod(jobset)[1:])
        with pytest.raises(ValidationError):
            _jobset_model().model_validate(jobset)


@pytest.mark.parametrize("args", [GPU_ARGS, TPU_RENDER])
def test_a_preemption_restarts_the_whole_set_without_using_up_max_restarts(args):
    jobset, model = _render(*args, "--max-restarts=2")
    policy = model.spec.failure_policy
    assert policy.max_restarts == 2  # failures count
    (rule,) = policy.rules
    assert rule.action == "RestartJobSetAndIgnoreMaxRestarts"
    assert rule.on_job_failure_reasons == ["PodFailurePolicy"]
    job = model.spec.replicated_jobs[0].template.spec
    # A disrupted pod (DisruptionTarget) fails the Job with reason PodFailurePolicy; the Job API
    # allows a podFailurePolicy only with restartPolicy Never; any other failure fails the Job
    # at once (backoffLimit 0) and costs one of maxRestarts.
    (pod_rule,) = job.pod_failure_policy.rules
    assert pod_rule.action == "FailJob"
    assert [(c.type, c.status) for c in pod_rule.on_pod_conditions] == [("DisruptionTarget",
                                                                         "True")]
    assert job.template.spec.restart_policy == "Never" and job.backoff_limit == 0
    assert job.completion_mode == "Indexed" and job.parallelism == job.completions == 4


def test_k8s_gpu_render_fills_every_placeholder():
    jobset, model = _render(*GPU_ARGS, "--accelerator=nvidia-h100-80gb", "--spot",
                            "--grace=600", "--service-account=trainer", "--",
                            "--config.optim.lr=1e-4", TRICKY)
    assert model.metadata.name == "bertjax"
    assert model.spec.network.enable_dns_hostnames is True
    job, pod, c = _pod(jobset)
    assert c["image"] == "reg.example/bertjax:v1"
    assert c["command"] == ["python", "-m", "bertjax.pretrain"]
    assert c["args"] == ["--config=configs/bert_base.py", "--workdir=gs://my-bucket/bert-base",
                         "--config.optim.lr=1e-4", TRICKY]
    env = {e["name"]: e for e in c["env"]}
    # pod 0 of Job 0 of replicated job "workers", under the JobSet's headless service, on a
    # port of its own (not the TPU runtime's 8476)
    assert env["BERTJAX_COORDINATOR"]["value"] == "bertjax-workers-0-0.bertjax:8482"
    assert env["BERTJAX_NUM_PROCESSES"]["value"] == "4"
    assert (env["BERTJAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
            == "metadata.annotations['batch.kubernetes.io/job-completion-index']")
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb",
                                   "cloud.google.com/gke-spot": "true"}
    assert pod["serviceAccountName"] == "trainer" and pod["terminationGracePeriodSeconds"] == 600


def test_k8s_gpu_render_from_env_with_another_name_and_port():
    jobset, _ = _render(env={"IMAGE": "img", "REPLICAS": "2", "WORKDIR": "gs://b/r",
                             "NAME": "bert-p2", "PORT": "1234", "GPUS_PER_POD": "4"})
    job, pod, c = _pod(jobset)
    env = {e["name"]: e for e in c["env"]}
    assert env["BERTJAX_COORDINATOR"]["value"] == "bert-p2-workers-0-0.bert-p2:1234"
    assert job["parallelism"] == 2 and c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert "nodeSelector" not in pod  # no accelerator type, no spot: any GPU node
    assert pod["serviceAccountName"] == "bertjax" and pod["terminationGracePeriodSeconds"] == 300


@pytest.mark.parametrize("tpu, chips, hosts", [("tpu-v5-lite-podslice:4x4", "4", 4),
                                               ("tpu-v5p-slice:2x2x4", "4", 4),
                                               ("tpu-v5-lite-podslice:2x4", "8", 1)])
def test_k8s_tpu_render_one_pod_per_host_and_jax_finds_the_slice(tpu, chips, hosts):
    jobset, model = _render(f"--tpu={tpu}", f"--chips={chips}", "--spot", *TPU_RENDER[1:])
    job, pod, c = _pod(jobset)
    assert job["parallelism"] == job["completions"] == hosts
    accelerator, topology = tpu.split(":")
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": accelerator,
                                   "cloud.google.com/gke-tpu-topology": topology,
                                   "cloud.google.com/gke-spot": "true"}
    assert c["resources"]["limits"] == {"google.com/tpu": chips}
    # GKE gives every pod TPU_WORKER_HOSTNAMES / TPU_WORKER_ID; JAX reads them (auto)
    assert c["env"] == [{"name": "BERTJAX_COORDINATOR", "value": "auto"}]
    assert model.metadata.annotations == {
        "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}


@pytest.mark.parametrize("args, needle", [
    (("--replicas=2", "--workdir=gs://b/r"), "--image"),
    (("--image=i", "--workdir=gs://b/r"), "--replicas"),
    (("--image=i", "--replicas=2"), "--workdir"),
    (("--image=i", "--replicas=two", "--workdir=gs://b/r"), "--replicas=two"),
    (("--image=i", "--replicas=2", "--workdir=gs://b/r", "--name=Bert_1"), "--name=Bert_1"),
    (("--image=i", "--replicas=2", "--workdir=gs://b/r", "--bogus"), "--bogus"),
    (("--image=i", "--replicas=2", "--workdir=gs://b/r", "--grace=5m"), "--grace=5m"),
    (("--image=i", "--replicas=2", "--workdir=gs://b/r", "--service-account=A_B"),
     "--service-account=A_B"),
    (("--image=i", "--workdir=gs://b/r", "--tpu=v5e-16"), "ACCELERATOR:TOPOLOGY"),
    (("--image=i", "--workdir=gs://b/r", "--tpu=tpu-v5-lite-podslice:4x4", "--replicas=16"),
     "has 4 hosts"),
    (("--image=i", "--workdir=gs://b/r", "--tpu=tpu-v5-lite-podslice:2x3", "--chips=4"),
     "not a multiple"),
])
def test_k8s_render_bad_arguments_are_one_line(args, needle):
    assert needle in one_line_error(run(RENDER, *args))


@pytest.mark.parametrize("template", TEMPLATES)
def test_k8s_render_refuses_a_placeholder_it_does_not_know(tmp_path, template):
    (tmp_path / "launch").mkdir()
    for f in [RENDER, *TEMPLATES]:
        shutil.copy(f, tmp_path / "launch")
    name = os.path.basename(template)
    text = open(template).read().replace("app: bertjax", "app: ${TEAM}")
    (tmp_path / "launch" / name).write_text(text)
    args = ("--tpu=tpu-v5-lite-podslice:4x4",) if "tpu" in name else ("--replicas=2",)
    line = one_line_error(run(str(tmp_path / "launch" / "k8s_render.sh"), "--image=i",
                              "--workdir=gs://b/r", *args))
    assert "${TEAM}" in line


# --- the runbook ------------------------------------------------------------------------------

def _no_header(text: str) -> str:
    return re.sub(r"^#.*\n", "", text, flags=re.M)  # docs paste manifests without the header


def test_docs_show_the_current_dry_run_output():
    """docs/pods.md pastes every launcher's dry run; they must not drift from the code."""
    docs = open(os.path.join(ROOT, "docs", "pods.md")).read()
    outputs = {
        "tpu": run(TPU, *DOCS_TPU).stdout,
        "slurm": run(SLURM, env={"DRY_RUN": "1"}).stdout.replace(ROOT, "/home/me/bertjax"),
        "k8s gpu": _no_header(run(RENDER, *GPU_ARGS, "--accelerator=nvidia-h100-80gb").stdout),
        "k8s tpu": _no_header(run(RENDER, *TPU_RENDER, "--spot").stdout),
    }
    for what, out in outputs.items():
        assert out and out in docs, what
