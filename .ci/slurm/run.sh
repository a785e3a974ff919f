#!/usr/bin/env bash
# Run a tiny configuration of the workflow through profiles/slurm on the cluster that
# .ci/slurm/setup.sh brought up, then check its outputs. The profile's partition and
# account placeholders are overridden as a user would. Bounded by `timeout -k`: a stuck
# status query must not hang CI.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
limit=${REVUNET_SLURM_TIMEOUT:-600}
work=$(mktemp -d /tmp/revunet-slurm.XXXXXX)
echo "slurm run in $work (limit ${limit} s)"

status=0
timeout -k 20 "$limit" snakemake \
    --snakefile "$repo/Snakefile" --directory "$work" \
    --profile "$repo/profiles/slurm" \
    --configfile "$repo/config.yaml" "$repo/config/test.yaml" "$repo/.ci/slurm/config.yaml" \
    --slurm-no-account --slurm-keep-successful-logs \
    --default-resources slurm_partition=ci mem_mb=1000 runtime=10 \
    --set-resources train:slurm_partition=ci infer:slurm_partition=ci \
    --jobs 4 > "$work/snakemake.log" 2>&1 || status=$?
if [ "$status" -ne 0 ]; then
    echo "slurm run failed (exit $status; 124 means it timed out); last lines of its log:" >&2
    tail -n 60 "$work/snakemake.log" >&2
    find "$work/.snakemake/slurm_logs" -name '*.log' -newer "$work/snakemake.log" -exec tail -n 20 {} + >&2 2>/dev/null || true
    squeue --states=all >&2 || true
    exit 1
fi

fail() { echo "slurm run: $*" >&2; exit 1; }
results="$work/results"
for exp in bruegger_rev_1_1_128 invres_brats_unet3d; do
    [ -s "$results/train/$exp/summary.json" ] || fail "no training summary for $exp"
    [ -s "$results/evaluation/$exp/summary.csv" ] || fail "no evaluation for $exp"
    [ -s "$results/predictions/$exp/predictions.csv" ] || fail "no predictions for $exp"
done
for file in tables/bruegger2019.md tables/invres_brats.csv figures/training_curves.png report.html; do
    [ -s "$results/$file" ] || fail "missing $file"
done
# the training and inference jobs went through SLURM with one GPU each (squeue keeps
# finished jobs for MinJobAge); CPU jobs asked for none
jobs=$(squeue --states=all --noheader --Format='WorkDir:|,Comment:|,tres-per-job:' | awk -F'|' -v dir="$work" '$1 == dir')
gpu_jobs=$(echo "$jobs" | grep -cE '\|rule_(train|infer)_[^|]*\|gres:gpu:1$' || true)
[ "$gpu_jobs" -eq 4 ] || fail "expected 4 training/inference jobs with gres:gpu:1 in squeue, found $gpu_jobs: $jobs"
cpu_jobs=$(echo "$jobs" | grep -vE '\|rule_(train|infer)_' | grep -c 'gpu' || true)
[ "$cpu_jobs" -eq 0 ] || fail "CPU jobs asked for a GPU: $jobs"
echo "slurm run: OK ($(echo "$jobs" | wc -l) SLURM jobs, $gpu_jobs on the GPU)"
rm -rf "$work"
