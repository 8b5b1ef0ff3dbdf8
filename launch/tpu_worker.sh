#!/usr/bin/env bash
# What launch/tpu_pod.sh runs on every TPU VM worker of a slice (each worker runs it by itself).
#
#   bash bertjax/launch/tpu_worker.sh setup             # a Python >= 3.11 venv with the pins
#   bash bertjax/launch/tpu_worker.sh run [--detach] -- -m bertjax.pretrain FLAGS...
#   bash bertjax/launch/tpu_worker.sh stop              # SIGTERM: the run saves and exits
#
# Layout in the worker's home directory:
#   bertjax/          the code, replaced by every tpu_pod.sh --setup (copied, never pulled)
#   bertjax-venv/     the virtualenv, reinstalled only when the pinned requirements change
#   bertjax-logs/     worker-<N>.log (appended across restarts), run.pid, run.status
#
# setup: finds a Python the project supports (>= 3.11; TPU VM images on Ubuntu 22.04 ship 3.10,
#   so it installs Ubuntu's python3.11 and python3.11-venv with apt when there is none), makes
#   the venv and installs requirements.txt + requirements-tpu.txt (jax[tpu] at the project's
#   JAX version) with the pins of constraints.txt.
# run: stops this worker's previous run (SIGTERM: it saves), ends any other process holding the
#   TPU chips and removes the libtpu lock file, then starts the command detached from the ssh
#   session (it survives a dropped connection), its output appended to the worker's log; without
#   --detach it then follows the log until the run ends and exits with the run's status.
#   BERTJAX_COORDINATOR=auto: jax.distributed finds the slice from the TPU VM metadata.
#
# Environment (for tests and odd images): BERTJAX_PYTHON (the run's interpreter), BERTJAX_DEV
# (default /dev), BERTJAX_TPU_LOCKFILE (default /tmp/libtpu_lockfile), BERTJAX_WORKER (this
# worker's number; default from the TPU VM metadata), STOP_GRACE_S (default 120).
set -euo pipefail

prog="tpu_worker.sh"
die() { echo "$prog: $1" >&2; exit 2; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"  # the code: ~/bertjax
venv="$HOME/bertjax-venv"
logs="$HOME/bertjax-logs"
dev="${BERTJAX_DEV:-/dev}"
lockfile="${BERTJAX_TPU_LOCKFILE:-/tmp/libtpu_lockfile}"
grace="${STOP_GRACE_S:-120}"

as_root() {  # other users' processes and root's lock file need sudo; the TPU VM user has it
  if [[ $(id -u) == 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else "$@"; fi
}

worker_number() {
  if [[ -n ${BERTJAX_WORKER:-} ]]; then echo "$BERTJAX_WORKER"; return; fi
  local n
  n="$(curl -s -m 2 -H Metadata-Flavor:Google \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number \
    2>/dev/null || true)"
  [[ $n =~ ^[0-9]+$ ]] && echo "$n" || hostname
}

supported() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

find_python() {
  local p
  for p in python3.13 python3.12 python3.11 python3; do
    if command -v "$p" >/dev/null && supported "$p"; then command -v "$p"; return; fi
  done
  return 1
}

setup() {
  local python stamp
  if ! python="$(find_python)"; then
    command -v apt-get >/dev/null ||
      die "no Python >= 3.11 on this worker and no apt-get to install one; use a TPU VM image with Python 3.11 or newer"
    echo "$prog: no Python >= 3.11 here (TPU VM images on Ubuntu 22.04 ship 3.10): installing python3.11 with apt" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv
    python="$(find_python)" || die "apt installed python3.11, but it does not run; install Python >= 3.11 by hand"
  fi
  if [[ ! -x $venv/bin/python ]] || ! supported "$venv/bin/python"; then
    rm -rf "$venv"
    if ! "$python" -m venv "$venv"; then  # Debian/Ubuntu keep ensurepip in pythonX.Y-venv
      local v
      v="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python$v-venv"
      rm -rf "$venv"
      "$python" -m venv "$venv"
    fi
  fi
  cd "$here"
  for f in constraints.txt requirements.txt requirements-tpu.txt; do
    [[ -f $f ]] || die "$here/$f is missing; copy the whole checkout (launch/tpu_pod.sh --setup does)"
  done
  stamp="$(cat constraints.txt requirements.txt requirements-tpu.txt | sha256sum | cut -c1-16)"
  if [[ $(cat "$venv/.bertjax-requirements" 2>/dev/null) != "$stamp" ]]; then
    "$venv/bin/python" -m pip install -q -c constraints.txt -r requirements.txt \
      -r requirements-tpu.txt
    echo "$stamp" > "$venv/.bertjax-requirements"
  fi
  # imports only: opening the TPU here would take the chips from a run starting next
  "$venv/bin/python" -c 'import jax, libtpu, bertjax; print("worker ready: Python",
    ".".join(map(str, __import__("sys").version_info[:3])), "jax", jax.__version__)'
}

alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

stop() {  # this worker's run: SIGTERM (it finishes the step, saves, exits 0), SIGKILL after grace
  local pid
  pid="$(cat "$logs/run.pid" 2>/dev/null || true)"
  alive "$pid" || return 0
  echo "$prog: stopping the previous run (pid $pid, SIGTERM: it saves first)" >&2
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace; i++)); do alive "$pid" || return 0; sleep 1; done
  echo "$prog: pid $pid still runs after ${grace}s; SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

clear_tpu() {  # whatever else holds the chips (a crashed run's children, another user's job)
  local chips=() pids=""
  shopt -s nullglob
  chips=("$dev"/accel[0-9]* "$dev"/vfio/[0-9]*)
  shopt -u nullglob
  if ((${#chips[@]})); then
    if command -v lsof >/dev/null; then
      pids="$(as_root lsof -t "${chips[@]}" 2>/dev/null | sort -u | tr '\n' ' ' || true)"
    elif command -v fuser >/dev/null; then
      pids="$(as_root fuser "${chips[@]}" 2>/dev/null | tr -s ' ' || true)"
    fi
  fi
  if [[ -n ${pids// /} ]]; then
    echo "$prog: processes $pids hold the TPU chips; ending them" >&2
    as_root kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < 20; i++)); do  # up to 10 s to let go, then SIGKILL
      as_root kill -0 $pids 2>/dev/null || break
      sleep 0.5
    done
    as_root kill -KILL $pids 2>/dev/null || true
  fi
  if [[ -e $lockfile ]]; then as_root rm -f "$lockfile"; fi
}

run() {
  local detach=0
  while (($#)) && [[ $1 != -- ]]; do
    case "$1" in
      --detach) detach=1 ;;
      *) die "unknown run option '$1'; usage: $prog run [--detach] -- ARGS..." ;;
    esac
    shift
  done
  [[ ${1:-} == -- ]] && shift
  (($#)) || die "nothing to run; usage: $prog run [--detach] -- -m bertjax.pretrain FLAGS..."
  local python="${BERTJAX_PYTHON:-$venv/bin/python}"
  [[ -x $python ]] || command -v "$python" >/dev/null ||
    die "$python does not exist; run launch/tpu_pod.sh with --setup first"
  mkdir -p "$logs"
  local worker log offset pid
  worker="$(worker_number)"
  log="$logs/worker-$worker.log"
  stop
  clear_tpu
  offset=$(($(stat -c %s "$log" 2>/dev/null || echo 0) + 1))
  echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) worker $worker: $python $*" >> "$log"
  rm -f "$logs/run.status" "$logs/run.pid"
  cd "$here"
  # Detached from the ssh session: a dropped connection does not end the run. The inner shell
  # records the run's pid (what stop() signals) and its exit status.
  setsid nohup bash -c '"$@" & echo $! > "$0/run.pid"; wait $!; echo $? > "$0/run.status"' \
    "$logs" env BERTJAX_COORDINATOR="${BERTJAX_COORDINATOR:-auto}" "$python" "$@" \
    >> "$log" 2>&1 < /dev/null &
  pid=$!
  for ((i = 0; i < 100; i++)); do [[ -s $logs/run.pid ]] && break; sleep 0.1; done
  if ((detach)); then
    echo "worker $worker: started; log in ~/bertjax-logs/worker-$worker.log"
    return 0
  fi
  tail -c "+$offset" -f --pid="$pid" "$log" | sed -u "s/^/[worker $worker] /" || true
  wait "$pid" 2>/dev/null || true
  local status
  status="$(cat "$logs/run.status" 2>/dev/null || echo 1)"
  echo "[worker $worker] exit status $status (log: ~/bertjax-logs/worker-$worker.log)"
  return "$status"
}

case "${1:-}" in
  setup) setup ;;
  run) shift; run "$@" ;;
  stop) stop ;;
  *) die "usage: $prog setup | run [--detach] -- ARGS... | stop" ;;
esac
