#!/usr/bin/env bash
# The full 12-epoch runs of the `fast` recipe behind its results (docs/measurements.md), one at a time:
#   scripts/fast_runs.sh                         # every run below, in this order
#   scripts/fast_runs.sh lightning-seed1 seed2   # only these
# Each run trains into runs/fast-NAME (or $FAST_RUNS_DIR/fast-NAME). A finished run is skipped and an interrupted one
# continued with --resume (exactly: docs/cli.md#stopping-and-resuming), so the script can be stopped and started again
# as often as needed: a run takes 66.8-70.0 minutes on a quiet 2-core CPU with bf16 instructions (seed2, seed3 and
# lightning-seed1; seed1 shared its CPU and took 120.0); on a CPU without them, in fp32, no full run has been timed.
# Run it in a clean checkout: every metrics.json records the commit and whether the tree was clean.
# Ctrl-C stops the run in progress (its finished epochs kept) and the script with it. Committing a result is a
# step of its own: copy runs/fast-NAME/metrics.json to results/fast/TRAINER-fast-NAME.json (NAME without
# its lightning- prefix: lightning-seed1 -> lightning-fast-seed1.json), then
# `python -m cifar_s12 results --dir results/fast` makes the table.
# The other files in results/fast, the moving-average (ema-*) runs and the ablations, are this script's runs as of
# commit 68880f0 (`git show 68880f0:scripts/fast_runs.sh`), whose package has their code (ema_decay, dirac_init);
# each JSON file records the command as it ran and its git_commit.
set -uo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python}
RUNS_DIR=${FAST_RUNS_DIR:-runs}

# name -> what it changes in `--recipe fast --seed N` (N from the name's seedN): the preset itself from three seeds,
# in the Lightning trainer, and with the batched data path (docs/data-path.md). The TTA views need no run of their own: every run reports its accuracy without TTA,
# with flip TTA alone and with the recipe's flip + shift TTA.
declare -A RUNS=(
  [seed1]=""
  [seed2]=""
  [seed3]=""
  [lightning-seed1]="--trainer lightning"
  [batched-seed1]="--set data_path=batched"
)
ORDER=(seed1 seed2 seed3 lightning-seed1 batched-seed1)

# What to do with each run folder DIR given, one word a line (runs.folder and runs.table own the file names and the
# finished rule; one Python for all, since importing the package takes seconds): done (all of its recipe's epochs,
# and its TTA figure if the recipe has TTA); no-tta (all the epochs but no TTA figure: it stopped in its final
# evaluation); torch or lightning (that trainer's checkpoint is there to continue); new (nothing to continue)
run_states() {
  "$PYTHON" - "$@" <<'EOF'
import json, sys
from cifar_s12.runs.table import is_finished, lacks_tta
from cifar_s12.runs.folder import RunFolder
for folder in map(RunFolder, sys.argv[1:]):
    try:
        run = json.loads(folder.metrics.read_text()) if folder.metrics.is_file() else None
    except (OSError, ValueError) as err:
        sys.exit(f"cannot read {folder.metrics}: {err}")
    if run is not None and is_finished(run):
        print("no-tta" if lacks_tta(run) else "done")
    else:
        print("torch" if folder.train_state.is_file() else "lightning" if folder.lightning_last.is_file() else "new")
EOF
}

names=("${@:-${ORDER[@]}}")
for name in "${names[@]}"; do  # every name is checked before anything trains
  if [ -z "${RUNS[$name]+set}" ]; then echo "unknown run $name; the runs: ${ORDER[*]}" >&2; exit 2; fi
done

outs=("${names[@]/#/$RUNS_DIR/fast-}")
states=$(run_states "${outs[@]}") || { echo "stopped before training anything" >&2; exit 2; }
mapfile -t states <<< "$states"

status=0
for i in "${!names[@]}"; do
  name=${names[$i]} out=${outs[$i]} state=${states[$i]}
  if [ "$state" = done ]; then echo "$(date -u +%FT%TZ) $name: finished before, skipped"; continue; fi
  if [ "$state" = no-tta ]; then
    echo "$name: trained all its epochs but has no TTA figure (stopped in its final evaluation); train it again" \
         "with --overwrite to have one" >&2
    status=1; continue
  fi
  if [ "$state" != new ]; then
    echo "$(date -u +%FT%TZ) $name: resuming"
    "$PYTHON" -m cifar_s12 train --trainer "$state" --resume "$out" >> "$out.log" 2>&1  # after the earlier parts' log
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
