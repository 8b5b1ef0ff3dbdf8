#!/usr/bin/env bash
# Render a JobSet for one run and print it: the Kubernetes launcher's dry run.
#
# Usage:
#   launch/k8s_render.sh --image=REGISTRY/bertjax:TAG --workdir=gs://BUCKET/RUN
#       (--replicas=N [--gpus=8] [--accelerator=nvidia-h100-80gb] [--port=8482]   GPUs
#        | --tpu=ACCELERATOR:TOPOLOGY [--chips=4])                                TPU, e.g.
#                                                         --tpu=tpu-v5-lite-podslice:4x4
#       [--spot] [--service-account=bertjax] [--grace=300] [--max-restarts=3]
#       [--config=configs/bert_base.py] [--name=bertjax] [-- more bertjax.pretrain flags]
#   launch/k8s_render.sh ... | kubectl apply -f -                   # start it
#   launch/k8s_render.sh ... | kubectl apply --dry-run=server -f -  # check it against a cluster
#
# GPUs: launch/k8s_jobset.yaml, N pods of --gpus GPUs (--accelerator: a GKE GPU type to pin).
# TPU: launch/k8s_jobset_tpu.yaml, one pod per TPU VM host of the slice: the topology's chips
# divided by --chips (chips per host; 4 on multi-host v4, v5e, v5p and v6e slices), so --replicas
# may be left out (given, it must match).
# --spot: only Spot nodes. --grace: terminationGracePeriodSeconds, the time SIGTERM leaves for the
# save. --max-restarts: restarts after failures; preemptions restart the set without counting.
#
# The same values may come from the environment: IMAGE, REPLICAS, WORKDIR, GPUS_PER_POD,
# ACCELERATOR, TPU, TPU_CHIPS, SPOT=1, SERVICE_ACCOUNT, GRACE_S, MAX_RESTARTS, CONFIG, NAME, PORT.
# Every ${VAR} of the template is replaced (plain sed, no envsubst needed); a placeholder left
# over is an error, so the templates and this script cannot drift apart silently.
set -euo pipefail

prog="launch/k8s_render.sh"
usage="usage: $prog --image=IMAGE --workdir=gs://BUCKET/RUN (--replicas=N [--gpus=8] | --tpu=ACCELERATOR:TOPOLOGY [--chips=4]) [--spot] [--service-account=SA] [--grace=S] [--max-restarts=N] [--config=FILE] [--name=bertjax] [-- FLAGS...]"
die() {  # one line that says what is wrong and how to fix it, then a non-zero exit
  echo "$prog: $1" >&2
  exit 2
}

image="${IMAGE:-}" replicas="${REPLICAS:-}" workdir="${WORKDIR:-}"
gpus="${GPUS_PER_POD:-8}" accelerator="${ACCELERATOR:-}" tpu="${TPU:-}" chips="${TPU_CHIPS:-4}"
spot="${SPOT:-0}" service_account="${SERVICE_ACCOUNT:-bertjax}" grace="${GRACE_S:-300}"
max_restarts="${MAX_RESTARTS:-3}"
config="${CONFIG:-configs/bert_base.py}" name="${NAME:-bertjax}" port="${PORT:-8482}"
extra=()
while (($#)); do
  case "$1" in
    --image=*) image="${1#*=}" ;;
    --replicas=*) replicas="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --gpus=*) gpus="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --tpu=*) tpu="${1#*=}" ;;
    --chips=*) chips="${1#*=}" ;;
    --spot) spot=1 ;;
    --service-account=*) service_account="${1#*=}" ;;
    --grace=*) grace="${1#*=}" ;;
    --max-restarts=*) max_restarts="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --name=*) name="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    -h | --help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument '$1'; put bertjax.pretrain flags after '--' ($usage)" ;;
  esac
  shift
done

[[ -n $image ]] || die "missing --image (or IMAGE): an image with this checkout installed; $usage"
if [[ -n $tpu ]]; then
  [[ $tpu =~ ^(tpu-[a-z0-9-]+):([1-9][0-9]*(x[1-9][0-9]*){1,2})$ ]] ||
    die "--tpu=$tpu; expected ACCELERATOR:TOPOLOGY as GKE names them, e.g. --tpu=tpu-v5-lite-podslice:4x4 or --tpu=tpu-v5p-slice:2x2x2"
  tpu_accelerator="${BASH_REMATCH[1]}" tpu_topology="${BASH_REMATCH[2]}"
  [[ $chips =~ ^[1-9][0-9]*$ ]] || die "--chips=$chips; expected the TPU chips of one host, e.g. 4"
  total=1
  for d in ${tpu_topology//x/ }; do total=$((total * d)); done
  ((total % chips == 0)) ||
    die "--tpu=$tpu has $total chips, not a multiple of --chips=$chips per host; check --chips"
  hosts=$((total / chips))
  [[ -z $replicas || $replicas == "$hosts" ]] ||
    die "--replicas=$replicas, but a $tpu_topology slice of $chips-chip hosts has $hosts hosts; leave out --replicas"
  replicas="$hosts"
else
  [[ -n $replicas ]] || die "missing --replicas=N (or REPLICAS), the number of pods (or --tpu=ACCELERATOR:TOPOLOGY for TPU); $usage"
  [[ $replicas =~ ^[1-9][0-9]*$ ]] || die "--replicas=$replicas; expected a whole number >= 1 (pods)"
  [[ $gpus =~ ^[0-9]+$ ]] || die "--gpus=$gpus; expected a whole number (GPUs per pod)"
  [[ $port =~ ^[1-9][0-9]*$ ]] && ((port < 65536)) || die "--port=$port; expected 1-65535"
fi
[[ -n $workdir ]] || die "missing --workdir=gs://BUCKET/RUN (or WORKDIR); $usage"
[[ $grace =~ ^[0-9]+$ ]] || die "--grace=$grace; expected whole seconds, e.g. 300"
[[ $max_restarts =~ ^[0-9]+$ ]] || die "--max-restarts=$max_restarts; expected a whole number"
# Pod hostnames are <name>-workers-0-<index>: a DNS label of at most 63 characters.
[[ $name =~ ^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$ ]] ||
  die "--name=$name; expected lowercase letters, digits and '-', at most 40 characters"
[[ $service_account =~ ^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$ ]] ||
  die "--service-account=$service_account; expected a Kubernetes service account name (lowercase letters, digits, '-', '.')"
[[ -z $accelerator || $accelerator =~ ^[a-z0-9][-a-z0-9.]*$ ]] ||
  die "--accelerator=$accelerator; expected a GKE GPU type such as nvidia-h100-80gb"
# A pod's own filesystem is gone when it stops and no other pod sees it.
[[ $workdir == *://* ]] || echo "$prog: warning: --workdir=$workdir is not a bucket URL; it" \
  "must be a volume every pod mounts (add it to the manifest)" >&2

for v in "$image" "$config" "$workdir" "${extra[@]}"; do
  [[ $v != *$'\n'* ]] || die "a value holds a newline: $(printf '%q' "$v")"
done

yaml_str() {  # the inside of a YAML double-quoted string
  local v="${1//\\/\\\\}"
  echo "${v//\"/\\\"}"
}
sed_rep() {  # a sed replacement text that stands for itself
  printf '%s' "$1" | sed -e 's/[\\&|]/\\&/g'
}

here="$(dirname "${BASH_SOURCE[0]}")"
template="$here/k8s_jobset.yaml"
[[ -z $tpu ]] || template="$here/k8s_jobset_tpu.yaml"
[[ -f $template ]] || die "template $template is missing; run this script from its checkout"
items=""
for a in "${extra[@]}"; do items+="- \"$(yaml_str "$a")\""$'\n'; done
selectors=""  # nodeSelector entries, each "key: value"
if [[ -n $tpu ]]; then
  selectors+="cloud.google.com/gke-tpu-accelerator: \"$tpu_accelerator\""$'\n'
  selectors+="cloud.google.com/gke-tpu-topology: \"$tpu_topology\""$'\n'
elif [[ -n $accelerator ]]; then
  selectors+="cloud.google.com/gke-accelerator: \"$accelerator\""$'\n'
fi
[[ $spot != 1 ]] || selectors+="cloud.google.com/gke-spot: \"true\""$'\n'

rendered="$(
  sed -e "s|\${NAME}|$(sed_rep "$name")|g" \
      -e "s|\${IMAGE}|$(sed_rep "$(yaml_str "$image")")|g" \
      -e "s|\${REPLICAS}|$replicas|g" \
      -e "s|\${GPUS_PER_POD}|$gpus|g" \
      -e "s|\${TPU_ACCELERATOR}|${tpu_accelerator:-}|g" \
      -e "s|\${TPU_TOPOLOGY}|${tpu_topology:-}|g" \
      -e "s|\${TPU_CHIPS}|$chips|g" \
      -e "s|\${SERVICE_ACCOUNT}|$service_account|g" \
      -e "s|\${GRACE_S}|$grace|g" \
      -e "s|\${MAX_RESTARTS}|$max_restarts|g" \
      -e "s|\${CONFIG}|$(sed_rep "$(yaml_str "$config")")|g" \
      -e "s|\${WORKDIR}|$(sed_rep "$(yaml_str "$workdir")")|g" \
      -e "s|\${PORT}|$port|g" "$template" |
  # The flags after -- become list items at the marker's indentation, the node selectors a
  # nodeSelector mapping (none: no key); the markers go away.
  ITEMS="$items" SELECTORS="$selectors" awk '
    /^[ ]*# EXTRA_ARGS/ {
      indent = $0; sub(/#.*/, "", indent)
      n = split(ENVIRON["ITEMS"], lines, "\n")
      for (i = 1; i <= n; i++) if (lines[i] != "") print indent lines[i]
      next
    }
    /^[ ]*# NODE_SELECTOR/ {
      indent = $0; sub(/#.*/, "", indent)
      n = split(ENVIRON["SELECTORS"], lines, "\n")
      if (ENVIRON["SELECTORS"] != "") print indent "nodeSelector:"
      for (i = 1; i <= n; i++) if (lines[i] != "") print indent "  " lines[i]
      next
    }
    { print }'
)"
if left="$(grep -o '\${[A-Za-z_]*}' <<<"$rendered" | sort -u | tr '\n' ' ')" && [[ -n $left ]]; then
  die "the template has placeholders this script does not fill: $left"
fi
echo "$rendered"
