#!/usr/bin/env bash
# Regenerate README.md's figures in images/ from a trained checkpoint (default: train a short run first).
#   scripts/make_readme_figures.sh                  # a 5-epoch run of the default recipe, then its report
#   scripts/make_readme_figures.sh runs/best/model.pt   # the report of an existing (e.g. full 24-epoch) run
# Everything is drawn by `python -m cifar_s12 report`; this script only chooses the run and the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg
PYTHON=${PYTHON:-python}

checkpoint=${1:-}
if [ -z "$checkpoint" ]; then
  "$PYTHON" -m cifar_s12 train --epochs 5 --seed 1 --overwrite --out runs/readme  # a rerun replaces it
  checkpoint=runs/readme/model.pt
fi
"$PYTHON" -m cifar_s12 report --checkpoint "$checkpoint" --out images/
