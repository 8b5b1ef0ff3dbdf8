#!/usr/bin/env bash
# BERT-base and BERT-large pre-training steps on one GPU in bf16: tokens/s and MFU against the
# card's dense bf16 datasheet peak, with attention_impl xla and cudnn, at sequence lengths 128
# and 512 (plus two cheap variants: no dropout at all, and BERT's own attention dropout 0.1
# through the explicit attention). Each configuration runs in its own process, so the device's
# peak-memory high-water mark is that run's alone and an out-of-memory run does not stop the
# others.
#
# Needs JAX with a GPU backend, flax, optax, ml_collections, absl-py and numpy; never
# TensorFlow or torch. It uses $PYTHON (default python3) and installs only what is missing,
# into a --target folder added to PYTHONPATH (from ./.whl/*.whl when that folder holds wheels,
# for hosts without an index; else from PyPI). Without a GPU backend it tries
# `pip install "jax[cuda12]"` and says so plainly if that fails. For a host with no index,
# fetch what it lacks beforehand, e.g. `pip download --no-deps -d .whl ml_collections`.
#
# cuDNN attention takes the key lengths (model.py): inputs must be right-padded, as BERT's are;
# packed rows (--pairs_per_row=3, the *-packed run) give it a block-diagonal mask instead.
# config.rng_impl=rbg draws the dropout bits with XLA's RngBitGenerator instead of threefry.
#
# Usage, from the repository root (or anywhere: it cd's there):
#   bash bench/gpu.sh [--base128=512] [--base512=128] [--large128=256] [--large512=48]
#                     [--steps=20] [--warmup=10] [--budget_s=330] [--run_timeout_s=200]
#                     [--only=REGEX] [--profile | --profile=REGEX]
# Batch sizes fit an 80 GB H100 (peaks seen on an H200: base s128 b512 38 GiB, base s512 b128
# 59 GiB, large s128 b256 52 GiB; large s512 b64 would need about 1.5x the last, ~79 GiB,
# hence 48). Results: $OUT/bench_gpu.json and $OUT/bench_gpu.log when
# OUT is set, else runs/bench_gpu/; --profile traces 3 extra steps of the first run (or of
# every run matching REGEX) with jax.profiler, prints where the device time goes
# (bertjax/bench/profile.py) and keeps the Perfetto traces in $OUT/profile.tgz.
#
# Time: XLA's compile dominates (seen on an H200 with jax 0.11.2: BERT-base 35 s, BERT-large
# 59 s per configuration; steps are 0.2-0.5 s), so runs that would start after --budget_s
# seconds are skipped and listed as skipped, and once an attention implementation fails, its
# later runs are skipped too (same cause): the script stays near six minutes.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

BASE128=512 BASE512=128 LARGE128=256 LARGE512=48
STEPS=20 WARMUP=10 BUDGET_S=330 RUN_TIMEOUT_S=200 ONLY="" PROFILE=""
for arg in "$@"; do
  case "$arg" in
    --base128=*) BASE128=${arg#*=} ;;
    --base512=*) BASE512=${arg#*=} ;;
    --large128=*) LARGE128=${arg#*=} ;;
    --large512=*) LARGE512=${arg#*=} ;;
    --steps=*) STEPS=${arg#*=} ;;
    --warmup=*) WARMUP=${arg#*=} ;;
    --budget_s=*) BUDGET_S=${arg#*=} ;;
    --run_timeout_s=*) RUN_TIMEOUT_S=${arg#*=} ;;
    --only=*) ONLY=${arg#*=} ;;
    --profile) PROFILE=FIRST ;;
    --profile=*) PROFILE=${arg#*=} ;;
    *) echo "error: unknown argument $arg; see the header of bench/gpu.sh" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
OUT_DIR=${OUT:-runs/bench_gpu}
SITE=${BENCH_SITE:-/tmp/bertjax-bench-site}
mkdir -p "$OUT_DIR" || exit 1
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG="$OUT_DIR/bench_gpu.log"
: >"$LOG"
say() { echo "$@" | tee -a "$LOG"; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# Let the big configurations use the card: JAX preallocates 75% by default.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}

pip_install() {  # pip_install NAME...: into $SITE, from ./.whl if it has wheels, else PyPI
  local src=()
  if compgen -G ".whl/*.whl" >/dev/null; then src=(--no-index --find-links .whl); fi
  # --no-deps: a dependency resolved here could shadow the host's CUDA jax with a CPU one.
  "$PY" -m pip install -q --no-deps --no-cache-dir --upgrade --target "$SITE" "${src[@]}" "$@"
}

# 1. JAX with a GPU backend (BENCH_ALLOW_CPU=1 skips this: only for trying the script itself).
if [[ -z "${BENCH_ALLOW_CPU:-}" ]] &&
   ! "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
  say "no GPU backend in $PY's JAX; trying: pip install -U 'jax[cuda12]'"
  "$PY" -m pip install -q -U "jax[cuda12]" 2>&1 | tail -3 | tee -a "$LOG"
  if ! "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
    say "error: JAX still has no GPU backend (no GPU, or pip could not reach an index to install"
    say "       jax[cuda12]); install JAX with CUDA for this machine, then rerun bench/gpu.sh"
    exit 1
  fi
fi

# 2. The rest of bertjax's JAX-side requirements (module:pip-name).
missing=()
for pair in flax:flax optax:optax ml_collections:ml_collections absl:absl-py numpy:numpy \
            yaml:PyYAML; do
  "$PY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  say "installing missing packages into $SITE: ${missing[*]}"
  pip_install "${missing[@]}" 2>&1 | tail -3 | tee -a "$LOG"
  export PYTHONPATH="$SITE:$PYTHONPATH"
  for pair in flax optax ml_collections absl numpy yaml; do
    "$PY" -c "import $pair" 2>/dev/null || { say "error: cannot import $pair after installing; \
put its wheel (and its dependencies') in ./.whl or give the host an index, then rerun"; exit 1; }
  done
fi

"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib.metadata as md
import jax
print("python", __import__("sys").version.split()[0], "| jax", jax.__version__, "| flax",
      md.version("flax"), "| optax", md.version("optax"))
print("devices:", jax.devices(), "| device_kind:", jax.devices()[0].device_kind)
EOF

# 3. The runs: name|config|seq_len|batch|attention_impl|extra flags. Most important first.
NO_ATTN_DROP="--config.model.attention_dropout=0"
RBG="--config.rng_impl=rbg"
RUNS=(
  "base-s128-xla|bert_base|128|$BASE128|xla|$NO_ATTN_DROP"
  "base-s128-xla-rbg|bert_base|128|$BASE128|xla|$NO_ATTN_DROP $RBG"
  "base-s128-xla-nodropout|bert_base|128|$BASE128|xla|$NO_ATTN_DROP --config.model.hidden_dropout=0"
  "base-s128-cudnn-rbg|bert_base|128|$BASE128|cudnn|$NO_ATTN_DROP $RBG"
  "large-s128-xla-rbg|bert_large|128|$LARGE128|xla|$NO_ATTN_DROP $RBG"
  "large-s128-cudnn-rbg|bert_large|128|$LARGE128|cudnn|$NO_ATTN_DROP $RBG"
  "base-s512-xla-rbg|bert_base|512|$BASE512|xla|$NO_ATTN_DROP $RBG"
  "base-s512-cudnn-rbg|bert_base|512|$BASE512|cudnn|$NO_ATTN_DROP $RBG"
  "large-s512-xla-rbg|bert_large|512|$LARGE512|xla|$NO_ATTN_DROP $RBG"
  "large-s512-cudnn-rbg|bert_large|512|$LARGE512|cudnn|$NO_ATTN_DROP $RBG"
  "base-s512-cudnn-rbg-packed|bert_base|512|$BASE512|cudnn|$NO_ATTN_DROP $RBG --pairs_per_row=3"
  "base-s128-explicit-bertdropout-rbg|bert_base|128|$BASE128|explicit|$RBG"
)
TMP=$(mktemp -d)
START=$SECONDS
for spec in "${RUNS[@]}"; do
  IFS='|' read -r name config seq batch impl extra <<<"$spec"
  [[ -n "$ONLY" && ! "$name" =~ $ONLY ]] && continue
  if [[ -e "$TMP/failed-$impl" ]]; then
    say "== $name: skipped ($impl failed in $(cat "$TMP/failed-$impl"))"
    echo "skipped: attention $impl failed in $(cat "$TMP/failed-$impl")" >"$TMP/$name.err"
    echo "$name" >>"$TMP/order"
    continue
  fi
  if ((SECONDS - START > BUDGET_S)); then
    say "== $name: skipped (past --budget_s=$BUDGET_S)"
    echo "skipped: past --budget_s=$BUDGET_S" >"$TMP/$name.err"
    echo "$name" >>"$TMP/order"
    continue
  fi
  say "== $name: $config seq $seq batch $batch attention $impl $extra"
  prof=()
  if [[ "$PROFILE" == FIRST && ! -e "$TMP/profile" ]] ||
     [[ -n "$PROFILE" && "$PROFILE" != FIRST && "$name" =~ $PROFILE ]]; then
    prof=(--profile_dir="$TMP/profile/$name")
  fi
  # shellcheck disable=SC2086  # $extra is a list of flags
  timeout "$RUN_TIMEOUT_S" "$PY" -m bertjax.bench --config="configs/$config.py" \
      --batch="$batch" --seq_len="$seq" --dtype=bfloat16 --attention_impl="$impl" \
      --mesh=1,1,1 --steps="$STEPS" --warmup="$WARMUP" --json="$TMP/$name.json" $extra \
      "${prof[@]}" \
      >"$TMP/$name.out" 2>&1
  rc=$?
  grep -v -E "^(I|W)[0-9]{4} |^WARNING: All log|xla_bridge" "$TMP/$name.out" | tee -a "$LOG"
  echo "$name" >>"$TMP/order"
  if ((rc != 0)); then
    # The exception's own line (the last "SomethingError: ..."), else the last line.
    { grep -E "^[A-Za-z_.]*(Error|Exception)\b" "$TMP/$name.out" | tail -n 1 ||
      tail -n 1 "$TMP/$name.out"; } >"$TMP/$name.err"
    ((rc == 124)) && echo "timed out after --run_timeout_s=$RUN_TIMEOUT_S" >>"$TMP/$name.err"
    say "== $name: FAILED (exit $rc): $(tail -n 1 "$TMP/$name.err")"
    if [[ ! -e "$TMP/first_ok" ]]; then
      say "== the first run failed: not trying the others (fix that one first)"
      break
    fi
    # Out of time or memory says nothing about the implementation; anything else does.
    if ((rc != 124)) && ! grep -q -i -E "out of memory|RESOURCE_EXHAUSTED" "$TMP/$name.out"; then
      echo "$name" >"$TMP/failed-$impl"
    fi
  fi
  touch "$TMP/first_ok"
done
say "== all runs: $((SECONDS - START)) s"

# 4. One JSON and a summary table.
"$PY" - "$TMP" "$OUT_DIR/bench_gpu.json" <<'EOF' 2>&1 | tee -a "$LOG"
import glob, json, os, sys
import jax
tmp, path = sys.argv[1:]
runs = {}
order = open(os.path.join(tmp, "order")).read().split() if os.path.exists(
    os.path.join(tmp, "order")) else []
for name in order:
    base = os.path.join(tmp, name)
    if os.path.exists(base + ".json"):
        runs[name] = json.load(open(base + ".json"))
    else:
        text = open(base + ".err").read().strip() if os.path.exists(base + ".err") else "?"
        runs[name] = {"error": text or "failed (no output)"}
out = {"jax_version": jax.__version__, "device_kind": jax.devices()[0].device_kind,
       "runs": runs}
json.dump(out, open(path, "w"), indent=1)
print(f"\n{'run':<32}{'batch':>6}{'seq':>5}{'step ms':>9}{'tokens/s':>11}{'MFU':>7}"
      f"{'matmul%':>8}{'mem GiB':>8}{'compile s':>10}")
for name, r in runs.items():
    if "error" in r:
        print(f"{name:<32} {' / '.join(r['error'].splitlines())[:110]}")
        continue
    s, mem = r["setup"], r["memory"]["peak_bytes"]
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
    print(f"{name:<32}{s['batch']:>6}{s['seq_len']:>5}{1e3 * r['step_time_s']:>9.1f}"
          f"{r['tokens_per_s']:>11,.0f}{mfu:>7}{100 * r['fraction_of_measured_matmul']:>7.1f}%"
          f"{(mem or 0) / 2**30:>8.1f}{r['compile_s']:>10.1f}")
print(f"MFU: model FLOPs (bertjax/bench/flops.py model_flops) / step time / "
      f"{next((r['peak_reference'] for r in runs.values() if 'peak_reference' in r), '?')}")
print("wrote", path)
EOF
if [[ -d "$TMP/profile" ]]; then
  # Only the Perfetto JSON (the summary's source): the xplane files are much larger.
  (cd "$TMP" && find profile -name 'perfetto_trace.json.gz' -print0 |
     xargs -0 tar -czf "$OUT_DIR/profile.tgz") && say "wrote $OUT_DIR/profile.tgz"
fi
rm -rf "$TMP"
