#!/usr/bin/env bash
# Render launch/k8s_jobset.yaml for one run and print it: the Kubernetes launcher's dry run.
#
# Usage:
#   launch/k8s_render.sh --image=REGISTRY/bertjax:TAG --replicas=N --workdir=gs://BUCKET/RUN
#       [--gpus=8] [--config=configs/bert_base.py] [--name=bertjax] [--port=8476]
#       [-- more bertjax.pretrain flags]
#   launch/k8s_render.sh ... | kubectl apply -f -                   # start it
#   launch/k8s_render.sh ... | kubectl apply --dry-run=client -f -  # check it against a cluster
#
# The same values may come from the environment: IMAGE, REPLICAS, WORKDIR, GPUS_PER_POD, CONFIG,
# NAME, PORT. Every ${VAR} of the template is replaced (plain sed, no envsubst needed); a
# placeholder left over is an error, so the template and this script cannot drift apart silently.
set -euo pipefail

prog="launch/k8s_render.sh"
usage="usage: $prog --image=IMAGE --replicas=N --workdir=gs://BUCKET/RUN [--gpus=8] [--config=FILE] [--name=bertjax] [-- FLAGS...]"
die() {  # one line that says what is wrong and how to fix it, then a non-zero exit
  echo "$prog: $1" >&2
  exit 2
}

image="${IMAGE:-}" replicas="${REPLICAS:-}" workdir="${WORKDIR:-}"
gpus="${GPUS_PER_POD:-8}" config="${CONFIG:-configs/bert_base.py}" name="${NAME:-bertjax}"
port="${PORT:-8476}"
extra=()
while (($#)); do
  case "$1" in
    --image=*) image="${1#*=}" ;;
    --replicas=*) replicas="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --gpus=*) gpus="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --name=*) name="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument '$1'; put bertjax.pretrain flags after '--' ($usage)" ;;
  esac
  shift
done

[[ -n $image ]] || die "missing --image (or IMAGE): an image with this checkout installed; $usage"
[[ -n $replicas ]] || die "missing --replicas=N (or REPLICAS), the number of pods; $usage"
[[ $replicas =~ ^[1-9][0-9]*$ ]] || die "--replicas=$replicas; expected a whole number >= 1 (pods)"
[[ $gpus =~ ^[0-9]+$ ]] || die "--gpus=$gpus; expected a whole number (GPUs per pod)"
[[ $port =~ ^[1-9][0-9]*$ ]] && ((port < 65536)) || die "--port=$port; expected 1-65535"
[[ -n $workdir ]] || die "missing --workdir=gs://BUCKET/RUN (or WORKDIR); $usage"
# Pod hostnames are <name>-workers-0-<index>: a DNS label of at most 63 characters.
[[ $name =~ ^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$ ]] ||
  die "--name=$name; expected lowercase letters, digits and '-', at most 40 characters"
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

template="$(dirname "${BASH_SOURCE[0]}")/k8s_jobset.yaml"
[[ -f $template ]] || die "template $template is missing; run this script from its checkout"
items=""
for a in "${extra[@]}"; do items+="- \"$(yaml_str "$a")\""$'\n'; done

rendered="$(
  sed -e "s|\${NAME}|$(sed_rep "$name")|g" \
      -e "s|\${IMAGE}|$(sed_rep "$(yaml_str "$image")")|g" \
      -e "s|\${REPLICAS}|$replicas|g" \
      -e "s|\${GPUS_PER_POD}|$gpus|g" \
      -e "s|\${CONFIG}|$(sed_rep "$(yaml_str "$config")")|g" \
      -e "s|\${WORKDIR}|$(sed_rep "$(yaml_str "$workdir")")|g" \
      -e "s|\${PORT}|$port|g" "$template" |
  # The flags after -- become list items at the marker's indentation (the marker goes away).
  ITEMS="$items" awk '
    /^[ ]*# EXTRA_ARGS/ {
      indent = $0; sub(/#.*/, "", indent)
      n = split(ENVIRON["ITEMS"], lines, "\n")
      for (i = 1; i <= n; i++) if (lines[i] != "") print indent lines[i]
      next
    }
    { print }'
)"
if left="$(grep -o '\${[A-Za-z_]*}' <<<"$rendered" | sort -u | tr '\n' ' ')" && [[ -n $left ]]; then
  die "the template has placeholders this script does not fill: $left"
fi
echo "$rendered"
