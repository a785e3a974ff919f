#!/usr/bin/env bash
# Run a tiny configuration of the workflow through profiles/slurm on the cluster that
# .ci/slurm/setup.sh brought up, then check its outputs. The profile's partition and
# account placeholders are overridden as a user would. Bounded by `timeout -k`: a stuck
# status query must not hang CI.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
limit=${REVUNET_SLURM_TIMEOUT:-900}
work=$(mktemp -d /tmp/revunet-slurm.XXXXXX)
results="$work/results"
cut=bruegger_rev_1_1_128  # trains in jobs of one minute (.ci/slurm/config.yaml)
echo "slurm run in $work (limit ${limit} s)"
started=$SECONDS

# The same training without any limit, for comparison: started here, beside the SLURM run,
# as soon as the workflow has written its inputs (the SLURM jobs spend most of their time waiting).
uncut() {
    local data="$results/data/brats"
    for _ in $(seq 600); do
        [ -s "$data/preprocessed/index.csv" ] && [ -s "$data/splits/bruegger.json" ] && [ -s "$results/experiments/$cut.json" ] && break
        sleep 1
    done
    OMP_NUM_THREADS=1 revunet train --experiment "$results/experiments/$cut.json" --preprocessed "$data/preprocessed" \
        --split "$data/splits/bruegger.json" --out "$work/uncut" --device cpu --no-progress --time-limit none
}
uncut > "$work/uncut.log" 2>&1 &
uncut_pid=$!
trap 'kill "$uncut_pid" 2>/dev/null || true' EXIT

status=0
timeout -k 20 "$limit" snakemake \
    --snakefile "$repo/Snakefile" --directory "$work" \
    --profile "$repo/profiles/slurm" \
    --configfile "$repo/config.yaml" "$repo/config/test.yaml" "$repo/.ci/slurm/config.yaml" \
    --slurm-no-account --slurm-keep-successful-logs \
    --default-resources slurm_partition=ci mem_mb=1000 runtime=10 \
    --set-resources train:slurm_partition=ci train:gpu_model=ci infer:slurm_partition=ci \
    --jobs 4 > "$work/snakemake.log" 2>&1 || status=$?
if [ "$status" -ne 0 ]; then
    echo "slurm run failed (exit $status; 124 means it timed out); last lines of its log:" >&2
    tail -n 60 "$work/snakemake.log" >&2
    find "$work/.snakemake/slurm_logs" -name '*.log' -newer "$work/snakemake.log" -exec tail -n 20 {} + >&2 2>/dev/null || true
    squeue --states=all >&2 || true
    exit 1
fi

fail() { echo "slurm run: $*" >&2; exit 1; }
echo "slurm run: the workflow took $((SECONDS - started)) s"
for exp in bruegger_rev_1_1_128 invres_brats_unet3d; do
    [ -s "$results/train/$exp/summary.json" ] || fail "no training summary for $exp"
    [ -s "$results/evaluation/$exp/summary.csv" ] || fail "no evaluation for $exp"
    [ -s "$results/predictions/$exp/predictions.csv" ] || fail "no predictions for $exp"
done
for file in tables/bruegger2019.md tables/invres_brats.csv figures/training_curves.png report.html; do
    [ -s "$results/$file" ] || fail "missing $file"
done
# the training jobs went through SLURM on the "ci" GPU model (gpu_model), the inference jobs on
# any GPU, CPU jobs on none (squeue keeps finished jobs for MinJobAge)
jobs=$(squeue --states=all --noheader --Format='WorkDir:|,Comment:|,tres-per-job:|,State:' | awk -F'|' -v dir="$work" '$1 == dir')
train_jobs=$(echo "$jobs" | grep -cE '\|rule_train_[^|]*\|gres:gpu:ci:1\|' || true)
infer_jobs=$(echo "$jobs" | grep -cE '\|rule_infer_[^|]*\|gres:gpu:1\|' || true)
[ "$infer_jobs" -eq 2 ] || fail "expected 2 inference jobs with gres:gpu:1 in squeue, found $infer_jobs: $jobs"
cpu_jobs=$(echo "$jobs" | grep -vE '\|rule_(train|infer)_' | grep -c 'gpu' || true)
[ "$cpu_jobs" -eq 0 ] || fail "CPU jobs asked for a GPU: $jobs"

# The long training ran in jobs of one minute: SLURM cut it at its time limit (state TIMEOUT),
# Snakemake retried it and each retry resumed; its weights must equal an uncut run's.
timeouts=$(echo "$jobs" | grep -F "$cut" | grep -c TIMEOUT || true)
stops=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['interruptions'])" "$results/train/$cut/summary.json")
[ "$timeouts" -ge 1 ] || fail "SLURM never cut the training of $cut at its time limit (SLURM jobs: $jobs)"
[ "$stops" -ge 1 ] || fail "$timeouts job(s) past their time limit but no graceful stop in last.pt"
[ "$train_jobs" -ge $((2 + stops)) ] || fail "expected at least $((2 + stops)) training jobs on gpu:ci, found $train_jobs: $jobs"
wait "$uncut_pid" || { tail -n 20 "$work/uncut.log" >&2; fail "the uncut reference training failed"; }
python - "$results/train/$cut/last.pt" "$work/uncut/last.pt" <<'PY' || fail "the resumed training differs from the uncut one"
import sys
import torch
cut, uncut = (torch.load(path, weights_only=False) for path in sys.argv[1:])
assert cut["epoch"] == uncut["epoch"], (cut["epoch"], uncut["epoch"])
different = [key for key, value in uncut["model_state"].items() if not torch.equal(cut["model_state"][key], value)]
assert not different, f"weights differ: {different[:5]}"
print(f"{sys.argv[1]}: {cut['epoch']} epochs, weights equal to the uncut run's;",
      "stops:", [(stop["reason"], stop["epoch"], stop["steps_done"]) for stop in cut["interruptions"]])
PY
echo "slurm run: OK ($(echo "$jobs" | wc -l) SLURM jobs; $train_jobs training jobs on gpu:ci, $infer_jobs inference"
echo "  jobs on gpu; $cut stopped $stops time(s) by SIGTERM at its time limit ($timeouts job(s) in state TIMEOUT),"
echo "  resumed exactly; $((SECONDS - started)) s in all)"
rm -rf "$work"
