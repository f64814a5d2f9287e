#!/usr/bin/env bash
# The committed campaign sweeps (configs/campaigns/NAME.yaml), one job at a time and resumable
# (a cut entry continues from its checkpoint, finished ones are skipped), then each sweep's
# report regenerated into docs/results/NAME/ (report.md, report.csv, plots) from the run folders;
# each run's summary, metrics, ledger and config copied to docs/results/measured/, and the tables of
# docs/results/compression.md and strategies.md rewritten from them (scripts/results_pages.py).
#   scripts/campaign.sh compression-lora strategies-noniid ...   # names under configs/campaigns
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
for name in "$@"; do
  start=$(date +%s)
  fedmpi sweep "configs/campaigns/$name.yaml" --all --resume
  echo "campaign: $name took $(( $(date +%s) - start )) s"
done
for name in "$@"; do
  # what the tables need, committed beside them (never checkpoints)
  for run in runs/campaigns/"$name"-*; do
    mkdir -p "docs/results/measured/$(basename "$run")"
    cp "$run"/{summary.json,metrics.jsonl,ledger.jsonl,config.yaml} "docs/results/measured/$(basename "$run")/"
  done
  fedmpi report runs/campaigns/"$name"-* --out "docs/results/$name"
done
python scripts/results_pages.py
