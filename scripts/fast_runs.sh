#!/usr/bin/env bash
# The full 12-epoch runs behind the `fast` recipe's results and ablation table (docs/measurements.md), one at a time:
#   scripts/fast_runs.sh                             # every run below, in this order
#   scripts/fast_runs.sh lightning-seed1 no-ema-seed1  # only these
# Each run trains into runs/fast-NAME (or $FAST_RUNS_DIR/fast-NAME). A finished run is skipped and an interrupted one continued with --resume
# (exactly: docs/cli.md#stopping-and-resuming), so the script can be stopped and started again as often as needed:
# a run takes about 80 minutes on a 2-core CPU with bf16 instructions and about 5.5 hours in fp32 on one without.
# Run it in a clean checkout: every metrics.json records the commit and whether the tree was clean.
# Ctrl-C stops the run in progress (its finished epochs kept) and the script with it. Committing a result is a
# step of its own: copy runs/fast-NAME/metrics.json to results/fast/TRAINER-fast-NAME.json, then
# `python -m cifar_s12 results --dir results/fast` makes the table.
set -uo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python}
RUNS_DIR=${FAST_RUNS_DIR:-runs}

# name -> what it changes in `--recipe fast --seed N` (N from the name's seedN). The preset itself from three seeds
# and in the Lightning trainer; then the ablations, one seed each: every part of the preset left out in turn (no-*,
# randflip), and dirac, the candidate that is not in it. The TTA views need no run of their own: every run reports
# its accuracy without TTA, with flip TTA alone and with the recipe's flip + shift TTA.
declare -A RUNS=(
  [seed1]=""
  [seed2]=""
  [seed3]=""
  [lightning-seed1]="--trainer lightning"
  [no-ema-seed1]="--set ema_decay=null"
  [no-bnbias-seed1]="--set bn_weight_frozen=false --set bn_bias_lr_scale=1"
  [no-bs256-seed1]="--set batch_size=512 --set max_lr=0.4"
  [no-cutout9-seed1]="--set augment.cutout_epochs=null"
  [randflip-seed1]="--set augment.flip=random"
  [dirac-seed1]="--set dirac_init=true"
)
ORDER=(seed1 seed2 seed3 lightning-seed1 no-ema-seed1 no-bnbias-seed1 no-bs256-seed1 no-cutout9-seed1 randflip-seed1
       dirac-seed1)

# exit 0: DIR/metrics.json holds all of its recipe's epochs (and its TTA figure, if the recipe has TTA); 3: all the
# epochs but no TTA figure (the run stopped in its final evaluation); 1: not finished, or no run there
finished() {
  [ -f "$1/metrics.json" ] || return 1
  "$PYTHON" - "$1/metrics.json" <<'EOF'
import json, sys
from cifar_s12.results import is_finished, lacks_tta
run = json.load(open(sys.argv[1]))
sys.exit(1 if not is_finished(run) else 3 if lacks_tta(run) else 0)
EOF
}

names=("${@:-${ORDER[@]}}")
for name in "${names[@]}"; do  # every name is checked before anything trains
  if [ -z "${RUNS[$name]+set}" ]; then echo "unknown run $name; the runs: ${ORDER[*]}" >&2; exit 2; fi
done

status=0
for name in "${names[@]}"; do
  out=$RUNS_DIR/fast-$name
  finished "$out"; state=$?
  if [ "$state" = 0 ]; then echo "$(date -u +%FT%TZ) $name: finished before, skipped"; continue; fi
  if [ "$state" = 3 ]; then
    echo "$name: trained all its epochs but has no TTA figure (stopped in its final evaluation); train it again" \
         "with --overwrite to have one" >&2
    status=1; continue
  fi
  if [ -f "$out/checkpoints/last.pt" ] || [ -f "$out/checkpoints/last.ckpt" ]; then
    echo "$(date -u +%FT%TZ) $name: resuming"
    trainer=torch; [ -f "$out/checkpoints/last.ckpt" ] && trainer=lightning
    "$PYTHON" -m cifar_s12 train --trainer $trainer --resume "$out" >> "$out.log" 2>&1  # after the earlier parts' log
  else
    echo "$(date -u +%FT%TZ) $name: starting"
    mkdir -p "$RUNS_DIR"
    # shellcheck disable=SC2086  # the settings are separate words
    "$PYTHON" -m cifar_s12 train --recipe fast --seed "${name##*seed}" ${RUNS[$name]} --out "$out" > "$out.log" 2>&1
  fi
  code=$?
  echo "$(date -u +%FT%TZ) $name: exit $code (log: $out.log)"
  [ "$code" = 130 ] && exit 130  # Ctrl-C (the CLI's exit code for it): stop here, not only this run
  [ "$code" = 0 ] || status=$code
done
exit $status
