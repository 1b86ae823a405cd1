#!/usr/bin/env bash
# One training run on a remote accelerator machine that has this tree but not the dataset.
#
# Here, once:   python scripts/pack_fer2013.py pack       (writes data/fer2013.npz.xz, ~59 MiB, not committed)
# There:        OUT=<folder that comes back> bash scripts/device_train.sh [FLAGFILE] [extra train flags...]
#
# Unpacks the faces to the challenge CSV, trains with --track_test (test accuracy per epoch, for the
# time-to-accuracy curve; selection stays on val), and leaves in $OUT the run's metrics.json, history,
# plots, TensorBoard events, log and the best model exported for `predict` (checkpoints stay behind:
# with Adam's moments they outgrow what comes back).
set -euo pipefail
flagfile="${1:-experiments/recipes/gpu_deep.flags}"
shift || true
out="${OUT:?set OUT to the folder whose files come back}"
packed="data/fer2013.npz.xz"
[[ -f "$packed" ]] || { echo "error: $packed missing: run 'python scripts/pack_fer2013.py pack' and carry it" >&2; exit 1; }
work="$(mktemp -d)"
export PYTHONUNBUFFERED=1 FERJAX_CACHE_DIR="$work/cache" FER2013_DIR="$work/fer2013.csv"
python3 scripts/pack_fer2013.py unpack --input="$packed" --output="$FER2013_DIR"
python3 -m experiments.train --flagfile="$flagfile" --workdir="$work/run" --track_test "$@" 2>&1 | tee "$out/train.log"
cp "$work/run"/metrics.json "$work/run"/history.csv "$work/run"/*.png "$work/run"/events.out.tfevents.* "$out/"
python3 scripts/export_model.py --workdir="$work/run" --output="$out/model" 2>&1 | tee -a "$out/train.log"
