#!/usr/bin/env bash
# The committed campaign sweeps (configs/campaigns/NAME.yaml), one job at a time and resumable
# (a cut entry continues from its checkpoint, finished ones are skipped), then each sweep's
# report regenerated into docs/results/NAME/ (report.md, report.csv, plots) from the run folders.
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
  fedmpi report runs/campaigns/"$name"-* --out "docs/results/$name"
done
