#!/usr/bin/env bash
# docs/plan.md's table: `python -m bertjax.plan --row` for BERT-base and BERT-large, phase 1 and
# phase 2 as configs/bert_{base,large}.py ship them (global batch 65,536 / 32,768 in 64
# accumulated micro-batches, bf16), on TPU pod slices, with model.scan_layers=True (one scanned
# layer compiles far faster than 12 or 24 unrolled ones; see docs/plan.md) and an evaluation
# batch that divides over 256 chips; --estimate: each plan also times the step from loop-free
# compiles, a cross-check of the cycles estimate. Each plan's full output goes to OUT/NN.log
# and its row to OUT/table.md. Needs libtpu (requirements-tpu.txt); no TPU.
#
#   bash scripts/plan_table.sh [OUT]        (OUT: bench/results/plan-YYYY-MM-DD)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results/plan-$(date +%F)}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
rows=(
  "bert_base.py:phase=1 v5e:16x16 --config.model.scan_layers=True --config.eval_batch_size=512"
  "bert_base.py:phase=2 v5e:16x16 --config.model.scan_layers=True --config.eval_batch_size=512"
  "bert_large.py:phase=1 v5e:16x16 --config.model.scan_layers=True --config.eval_batch_size=512"
  "bert_large.py:phase=2 v5e:16x16 --config.model.scan_layers=True --config.eval_batch_size=512"
  "bert_base.py:phase=1 v5p:4x4x4 --config.model.scan_layers=True --config.eval_batch_size=512"
  "bert_base.py:phase=2 v5p:4x4x4 --config.model.scan_layers=True --config.eval_batch_size=512"
  "bert_large.py:phase=1 v5p:4x4x4 --config.model.scan_layers=True --config.eval_batch_size=512"
  "bert_large.py:phase=2 v5p:4x4x4 --config.model.scan_layers=True --config.eval_batch_size=512"
)
$py -c "from bertjax.bench import plan; print(plan.MARKDOWN_HEADER)" > "$out/table.md"
n=0
for row in "${rows[@]}"; do
  read -r config topology extra <<< "$row"
  n=$((n + 1))
  log=$(printf "%s/%02d.log" "$out" "$n")
  cmd="$py -m bertjax.plan --config=configs/$config --topology=$topology $extra --estimate --row"
  echo "\$ $cmd" > "$log"
  start=$SECONDS
  $cmd >> "$log" 2>&1
  echo "exit $? after $((SECONDS - start)) s" >> "$log"
  grep '^| `' "$log" >> "$out/table.md" ||
    echo "| $config | $topology | (failed: see $log) |" >> "$out/table.md"
  echo "plan_table: $n/${#rows[@]} $config $topology $extra: $((SECONDS - start)) s"
done
cat "$out/table.md"
