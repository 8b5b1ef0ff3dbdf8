#!/usr/bin/env bash
# Pre-train on a Cloud TPU VM slice: one bertjax process per TPU VM worker, all started at once.
#
# Usage:
#   launch/tpu_pod.sh --tpu=NAME --zone=ZONE --workdir=gs://BUCKET/RUN [--project=PROJECT]
#       [--config=configs/bert_base.py] [--setup] [--detach] [--coordinator=auto|HOST:PORT]
#       [--dry-run] [-- more bertjax.pretrain flags, e.g. --config.optim.lr=1e-4]
#
# Every option may come from the environment instead: TPU_NAME, ZONE, PROJECT, CONFIG, WORKDIR,
# DRY_RUN=1, SETUP=1, DETACH=1, COORDINATOR; and REPO_DIR (the checkout on each worker, relative
# to its home directory; default bertjax), PYTHON (default python3), SETUP_CMD (what --setup
# runs), COORDINATOR_PORT (default 8476).
#
#   --setup    first run SETUP_CMD on every worker (default: git pull, then pip install the
#              requirements and jax[tpu]); the checkout must already exist there.
#   --detach   start the run under nohup (log in ~/bertjax-pretrain.log on each worker) so it
#              survives this terminal; without it, closing the terminal kills the run.
#   --dry-run  print every command instead of running it.
#
# Multi-host `gcloud ... ssh --worker=all` needs your key in an ssh agent first:
#   ssh-add ~/.ssh/google_compute_engine
set -euo pipefail

prog="launch/tpu_pod.sh"
usage="usage: $prog --tpu=NAME --zone=ZONE --workdir=gs://BUCKET/RUN [--project=P] [--config=FILE] [--setup] [--detach] [--dry-run] [-- FLAGS...]"

die() {  # one line that says what is wrong and how to fix it, then a non-zero exit
  echo "$prog: $1" >&2
  exit 2
}

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
dry_run="${DRY_RUN:-0}" setup="${SETUP:-0}" detach="${DETACH:-0}"
coordinator="${COORDINATOR:-}"
extra=()
while (($#)); do
  case "$1" in
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --coordinator=*) coordinator="${1#*=}" ;;
    --setup) setup=1 ;;
    --detach) detach=1 ;;
    --dry-run | --dry_run) dry_run=1 ;;
    -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument '$1'; put bertjax.pretrain flags after '--' ($usage)" ;;
  esac
  shift
done

[[ -n $tpu ]] || die "missing --tpu=NAME (or TPU_NAME); $usage"
[[ -n $zone ]] || die "missing --zone=ZONE (or ZONE), e.g. --zone=us-central2-b; $usage"
[[ -n $workdir ]] || die "missing --workdir=gs://BUCKET/RUN (or WORKDIR); $usage"
[[ -n $config ]] || die "empty --config; give a file such as configs/bert_base.py"
# Each worker is its own VM: a local path gives every worker a private, partial workdir.
[[ $workdir == gs://* ]] || echo "$prog: warning: --workdir=$workdir is not gs://; every TPU VM" \
  "worker would write its own local copy (checkpoints need one shared location)" >&2

python="${PYTHON:-python3}"
repo="${REPO_DIR:-bertjax}"
repo="${repo#\~/}"  # ssh starts in the home directory, so a home-relative path needs no ~
port="${COORDINATOR_PORT:-8476}"
setup_cmd="${SETUP_CMD:-cd $(show "$repo") && git pull --ff-only && $(show "$python") -m pip install -q -r requirements.txt \"jax[tpu]\"}"
gcloud_base=(gcloud compute tpus tpu-vm)
scope=(--zone="$zone")
[[ -z $project ]] || scope+=(--project="$project")

run() {  # runs a command, or only prints it in a dry run
  if [[ $dry_run == 1 ]]; then show "$@"; else "$@"; fi
}

# jax.distributed can find its peers from the TPU VM metadata, but bertjax only starts the
# distributed runtime when it sees a coordinator (or SLURM / GKE variables), and a gcloud-created
# slice sets none of those in the environment. Naming worker 0 as the coordinator is enough:
# the process count and this worker's index are still read from the metadata by JAX.
coord_env=""
if [[ $coordinator == auto ]]; then
  :  # rely on bertjax/JAX detecting the slice by themselves
elif [[ -n $coordinator ]]; then
  coord_env="$(show "BERTJAX_COORDINATOR=$coordinator") "
else
  describe=("${gcloud_base[@]}" describe "$tpu" "${scope[@]}"
            "--format=value(networkEndpoints[0].ipAddress)")
  if [[ $dry_run == 1 ]]; then
    echo "# worker 0's internal IP (<worker-0-ip> below):"
    show "${describe[@]}"
    ip="<worker-0-ip>"
  else
    ip="$("${describe[@]}")" || die "could not describe TPU '$tpu' in $zone; check the name, zone and project"
    [[ -n $ip ]] || die "TPU '$tpu' reports no worker IP; is it READY? (or pass --coordinator=HOST:PORT)"
  fi
  coord_env="BERTJAX_COORDINATOR=$ip:$port "  # an IP (or, dry, a placeholder): no quoting
fi

train="$coord_env$(show "$python" -m bertjax.pretrain --config="$config" --workdir="$workdir" \
  "${extra[@]}")"
remote="cd $(show "$repo") && "
if [[ $detach == 1 ]]; then
  # No controlling terminal, no inherited stdin: ssh returns at once and the run carries on.
  remote+="nohup env $train > ~/bertjax-pretrain.log 2>&1 < /dev/null &"
else
  remote+="$train"
fi

if [[ $setup == 1 ]]; then
  run "${gcloud_base[@]}" ssh "$tpu" "${scope[@]}" --worker=all --command="$setup_cmd"
fi
run "${gcloud_base[@]}" ssh "$tpu" "${scope[@]}" --worker=all --command="$remote"
