#!/usr/bin/env bash
# Pre-train on a Cloud TPU VM slice: one bertjax process per TPU VM worker, all started at once,
# from a slice that holds nothing yet, and again after every preemption.
#
# Usage:
#   launch/tpu_pod.sh --tpu=NAME --zone=ZONE --workdir=gs://BUCKET/RUN [--project=PROJECT]
#       [--config=configs/bert_base.py] [--create=ACCELERATOR_TYPE --runtime=VERSION [--spot]]
#       [--setup] [--relaunch[=N]] [--detach] [--stop] [--coordinator=HOST:PORT] [--dry-run]
#       [-- more bertjax.pretrain flags, e.g. --config.optim.lr=1e-4]
#
#   --create=T   make the slice first if it does not exist, as a queued resource named NAME
#                with one node NAME (e.g. --create=v5litepod-16 --runtime=v2-alpha-tpuv5-lite;
#                --spot for Spot capacity), and wait until it is ACTIVE; implies --setup on it.
#   --setup      copy this checkout to every worker (a tarball of the files git tracks or would
#                track, by scp: a recreated slice needs no git access) and run
#                launch/tpu_worker.sh setup there: a Python >= 3.11 venv with constraints.txt's
#                pins plus requirements-tpu.txt (jax[tpu] at the project's JAX version).
#   --relaunch=N after a preemption or failure: recreate the slice if it is gone (with --create),
#                set it up again, start again (the run resumes from its last checkpoint); at most
#                N times (default 20). A run that ends with status 0 (finished, or stopped by
#                --stop) or 2 (refused input) is not started again.
#   --detach     start the run and return (it survives this terminal); without it this script
#                follows every worker's output until the run ends.
#   --stop       SIGTERM the run on every worker (it finishes the step, saves, exits 0).
#   --dry-run    print every command instead of running it.
#
# No coordinator is passed: jax.distributed reads the slice (coordinator on worker 0 at JAX's
# TPU port, 8482; the count; this worker's index) from the TPU VM metadata
# (BERTJAX_COORDINATOR=auto). --coordinator=HOST:PORT names one instead.
# Each worker appends its output to ~/bertjax-logs/worker-<N>.log across restarts.
#
# Every option may come from the environment instead: TPU_NAME, ZONE, PROJECT, CONFIG, WORKDIR,
# CREATE, RUNTIME, SPOT=1, SETUP=1, RELAUNCH=N, DETACH=1, DRY_RUN=1, COORDINATOR; and PYTHON (the
# interpreter on the workers; default the venv --setup made), POLL_S (seconds between state
# checks while waiting for the slice, default 60).
#
# Multi-host `gcloud ... ssh --worker=all` needs your key in an ssh agent first:
#   ssh-add ~/.ssh/google_compute_engine
set -euo pipefail

prog="launch/tpu_pod.sh"
usage="usage: $prog --tpu=NAME --zone=ZONE --workdir=gs://BUCKET/RUN [--project=P] [--config=FILE] [--create=TYPE --runtime=VERSION [--spot]] [--setup] [--relaunch[=N]] [--detach] [--stop] [--dry-run] [-- FLAGS...]"

die() {  # one line that says what is wrong and how to fix it, then a non-zero exit
  echo "$prog: $1" >&2
  exit 2
}
say() { echo "$prog: $*" >&2; }

# Prints argv as one line that a shell reads back as the same argv; a --flag=value or NAME=value
# keeps its name outside the quotes so the printed commands stay readable.
show() {
  local a head out=()
  for a in "$@"; do
    head=""
    if [[ $a =~ ^(--?[A-Za-z0-9_.-]+=|[A-Za-z_][A-Za-z0-9_]*=)(.*)$ ]]; then
      head="${BASH_REMATCH[1]}" a="${BASH_REMATCH[2]}"
    fi
    if [[ $a =~ ^[A-Za-z0-9_./:=@,+%-]*$ ]]; then
      out+=("$head$a")
    else
      out+=("$head'${a//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

tpu="${TPU_NAME:-}" zone="${ZONE:-}" project="${PROJECT:-}" workdir="${WORKDIR:-}"
config="${CONFIG:-configs/bert_base.py}"
create="${CREATE:-}" runtime="${RUNTIME:-}" spot="${SPOT:-0}"
dry_run="${DRY_RUN:-0}" setup="${SETUP:-0}" detach="${DETACH:-0}" relaunch="${RELAUNCH:-0}"
coordinator="${COORDINATOR:-}" stop=0
extra=()
while (($#)); do
  case "$1" in
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --create=*) create="${1#*=}" ;;
    --runtime=*) runtime="${1#*=}" ;;
    --spot) spot=1 ;;
    --coordinator=*) coordinator="${1#*=}" ;;
    --setup) setup=1 ;;
    --relaunch) relaunch=20 ;;
    --relaunch=*) relaunch="${1#*=}" ;;
    --detach) detach=1 ;;
    --stop) stop=1 ;;
    --dry-run | --dry_run) dry_run=1 ;;
    -h | --help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument '$1'; put bertjax.pretrain flags after '--' ($usage)" ;;
  esac
  shift
done

[[ -n $tpu ]] || die "missing --tpu=NAME (or TPU_NAME); $usage"
[[ -n $zone ]] || die "missing --zone=ZONE (or ZONE), e.g. --zone=us-central2-b; $usage"
[[ $stop == 1 || -n $workdir ]] || die "missing --workdir=gs://BUCKET/RUN (or WORKDIR); $usage"
[[ -n $config ]] || die "empty --config; give a file such as configs/bert_base.py"
[[ $relaunch =~ ^[0-9]+$ ]] || die "--relaunch=$relaunch; expected a whole number of restarts"
[[ -z $create || -n $runtime ]] ||
  die "--create=$create needs --runtime=VERSION, e.g. --runtime=v2-alpha-tpuv5-lite for v5e"
[[ $coordinator != auto ]] || coordinator=""  # auto is what happens without one
if ((relaunch > 0)) && [[ $detach == 1 ]]; then
  die "--relaunch follows the run to see it end; leave out --detach"
fi
# Each worker is its own VM: a local path gives every worker a private, partial workdir.
[[ $stop == 1 || $workdir == gs://* ]] || say "warning: --workdir=$workdir is not gs://; every" \
  "TPU VM worker would write its own local copy (checkpoints need one shared location)"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"  # this checkout
scope=(--zone="$zone")
[[ -z $project ]] || scope+=(--project="$project")
tpuvm=(gcloud compute tpus tpu-vm)
queued=(gcloud compute tpus queued-resources)
poll="${POLL_S:-60}"

run() {  # runs a command, or only prints it in a dry run
  if [[ $dry_run == 1 ]]; then show "$@"; else "$@"; fi
}
ssh_all() { run "${tpuvm[@]}" ssh "$tpu" "${scope[@]}" --worker=all --command="$1"; }

# --- the slice -----------------------------------------------------------------------------

qr_state() {  # the queued resource's state, or "" when there is none
  "${queued[@]}" describe "$tpu" "${scope[@]}" --format='value(state.state)' 2>/dev/null || true
}

ensure_slice() {  # with --create: an ACTIVE queued resource named $tpu, made or remade
  [[ -n $create ]] || return 0
  local create_cmd=("${queued[@]}" create "$tpu" "${scope[@]}" --node-id="$tpu"
                    --accelerator-type="$create" --runtime-version="$runtime")
  [[ $spot != 1 ]] || create_cmd+=(--spot)
  if [[ $dry_run == 1 ]]; then
    echo "# the slice: a queued resource, created when absent, deleted and created again when"
    echo "# SUSPENDED or FAILED (a preempted Spot slice), then polled until ACTIVE:"
    show "${queued[@]}" describe "$tpu" "${scope[@]}" "--format=value(state.state)"
    show "${create_cmd[@]}"
    fresh=1
    return 0
  fi
  local state
  while :; do
    state="$(qr_state)"
    case "$state" in
      ACTIVE) return 0 ;;
      "") say "creating queued resource $tpu ($create, $runtime$([[ $spot != 1 ]] || echo ", Spot"))"
          "${create_cmd[@]}" || die "could not create queued resource $tpu; check the zone, quota and --create/--runtime values"
          fresh=1 ;;
      SUSPENDED | FAILED)
          say "queued resource $tpu is $state (preempted or refused): deleting it to ask again"
          "${queued[@]}" delete "$tpu" "${scope[@]}" --force --quiet ||
            die "could not delete queued resource $tpu; delete it by hand and rerun" ;;
      *) say "queued resource $tpu is $state; checking again in ${poll}s" ;;
    esac
    sleep "$poll"
  done
}

tpu_state() {
  "${tpuvm[@]}" describe "$tpu" "${scope[@]}" --format='value(state)' 2>/dev/null || true
}

# --- the code on every worker --------------------------------------------------------------

tarball="${TMPDIR:-/tmp}/bertjax-src.tar.gz"
ship_and_setup() {
  if [[ $dry_run == 1 ]]; then
    local here
    here="$(realpath --relative-to="$PWD" "$root")"
    echo "# the checkout as a tarball (git's tracked and untracked-but-not-ignored files),"
    echo "# copied to every worker, unpacked over a fresh ~/bertjax, then set up there:"
    echo "git -C $(show "$here") ls-files -z --cached --others --exclude-standard | tar -C $(show "$here") --null -T - -czf $(show "$tarball")"
  else
    tarball="$(mktemp --suffix=.tar.gz "${TMPDIR:-/tmp}/bertjax-src-XXXXXX")"
    trap 'rm -f "$tarball"' EXIT
    if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
      git -C "$root" ls-files -z --cached --others --exclude-standard |
        (cd "$root" && xargs -0 sh -c 'for f; do [ ! -e "$f" ] || printf "%s\0" "$f"; done' _) |
        tar -C "$root" --null -T - -czf "$tarball"
    else  # an unpacked copy without git: what the workers need
      tar -C "$root" -czf "$tarball" bertjax configs launch constraints.txt requirements*.txt \
        pyproject.toml
    fi
  fi
  run "${tpuvm[@]}" scp "$tarball" "$tpu:bertjax-src.tar.gz" "${scope[@]}" --worker=all
  # The previous run (if any) is stopped (it saves) before its code is replaced.
  ssh_all "{ [ ! -f bertjax/launch/tpu_worker.sh ] || bash bertjax/launch/tpu_worker.sh stop; } && rm -rf bertjax.new && mkdir bertjax.new && tar -xzf bertjax-src.tar.gz -C bertjax.new && rm -rf bertjax && mv bertjax.new bertjax && bash bertjax/launch/tpu_worker.sh setup"
}

# --- the run --------------------------------------------------------------------------------

worker_env=()
[[ -z $coordinator ]] || worker_env+=("BERTJAX_COORDINATOR=$coordinator")
[[ -z ${PYTHON:-} ]] || worker_env+=("BERTJAX_PYTHON=$PYTHON")
start_cmd() {
  local opts=()
  [[ $detach != 1 ]] || opts+=(--detach)
  echo "$(show ${worker_env[@]+"${worker_env[@]}"} bash bertjax/launch/tpu_worker.sh run \
    ${opts[@]+"${opts[@]}"} -- -m bertjax.pretrain --config="$config" --workdir="$workdir" \
    ${extra[@]+"${extra[@]}"})"
}

if [[ $stop == 1 ]]; then
  ssh_all "bash bertjax/launch/tpu_worker.sh stop"
  exit 0
fi

fresh=0
ensure_slice
if [[ $setup == 1 || $fresh == 1 ]]; then ship_and_setup; fi
if [[ $dry_run == 1 ]]; then
  ssh_all "$(start_cmd)"
  if ((relaunch > 0)); then
    echo "# then, after a preemption or failure (at most $relaunch times): the slice's state,"
    show "${tpuvm[@]}" describe "$tpu" "${scope[@]}" "--format=value(state)"
    echo "# the slice made again if it is gone (--create), the setup if it is new, the same run"
  fi
  exit 0
fi

attempt=0
while :; do
  status=0
  ssh_all "$(start_cmd)" || status=$?
  if [[ $status == 0 || $detach == 1 ]]; then exit "$status"; fi
  if [[ $status == 2 ]]; then
    die "the run refused its input (exit 2; its message is above); fix it and rerun"
  fi
  if ((attempt >= relaunch)); then
    die "the run ended with status $status$( ((relaunch)) && echo " after $relaunch relaunches"); rerun this command to resume from the last checkpoint"
  fi
  attempt=$((attempt + 1))
  say "the run ended with status $status; relaunch $attempt of $relaunch"
  fresh=0
  while state="$(tpu_state)" && [[ $state != READY ]]; do
    case "$state" in
      CREATING | STARTING | RESTARTING | REPAIRING | REIMAGING | UNKNOWN | STATE_UNSPECIFIED)
        say "slice $tpu is $state; checking again in ${poll}s"
        sleep "$poll" ;;
      *)  # PREEMPTED, TERMINATED, STOPPED, DELETING, or gone
        [[ -n $create ]] || die "slice $tpu is ${state:-gone} and there is no --create to make it again; recreate it (or add --create) and rerun"
        say "slice $tpu is ${state:-gone}"
        ensure_slice
        break ;;
    esac
  done
  if [[ $fresh == 1 ]]; then ship_and_setup; fi
done
