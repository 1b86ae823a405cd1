#!/usr/bin/env bash
# Training runs side by side on a remote accelerator machine that has this tree but not the dataset.
#
# Here, once, either   tar -C "$(dirname "$FER2013_DIR")" -cJf data/fer2013.tar.xz fer2013
#   (the Kaggle image folders, FER2013_DIR ending in fer2013: ~41 MiB, the JPEGs keep their own compression)
# or, from the challenge CSV,   python scripts/pack_fer2013.py pack   (data/fer2013.npz.xz, ~59 MiB).
# There:   OUT=<folder that comes back> DEADLINE=<Unix time> bash scripts/device_train.sh NAME "FLAGS" [NAME "FLAGS" ...]
#
# Everything is in $OUT by DEADLINE (say the machine's command limit from now, less a minute): the runs
# are done RESERVE_S seconds (default 120) before it, which the exports and packing take. Unpacks the
# faces, and for every run at once: fits its epoch count to the time left (scripts/fit_epochs.py
# --until, the runs measured side by side, as they then train, the final evaluation included), trains it
# right after with --track_test (test accuracy per epoch, for the time-to-accuracy curve; selection stays
# on val) and the fit's --time_limit_minutes (a run slower than its fit stops early and still reports),
# exports it, and leaves in $OUT one NAME.tar per run:
# metrics.json, history, plots, TensorBoard events, logs and the best model exported for `predict`
# (checkpoints stay behind: with Adam's moments they outgrow what comes back). Every minute each run's
# latest progress line goes to the console.
set -euo pipefail
out="${OUT:?set OUT to the folder whose files come back}"
deadline="${DEADLINE:?set DEADLINE to the Unix time by which the results must be in \$OUT}"
stop=$(( deadline - ${RESERVE_S:-120} ))
(( stop > $(date +%s) )) || { echo "error: DEADLINE=$deadline leaves no time to train" >&2; exit 1; }
(( $# >= 2 && $# % 2 == 0 )) || { echo "usage: device_train.sh NAME FLAGS [NAME FLAGS ...]" >&2; exit 1; }
names=() specs=()
while (( $# )); do names+=("$1"); specs+=("$2"); shift 2; done

work="$(mktemp -d)"
# The runs find the programs their fits compiled (the same jitted functions) in JAX's persistent cache.
export PYTHONUNBUFFERED=1 FERJAX_CACHE_DIR="$work/cache" JAX_COMPILATION_CACHE_DIR="$work/jax_cache"
if [[ -f data/fer2013.tar.xz ]]; then
  tar -C "$work" -xJf data/fer2013.tar.xz
  export FER2013_DIR="$work/fer2013"
elif [[ -f data/fer2013.npz.xz ]]; then
  export FER2013_DIR="$work/fer2013.csv"
  python3 scripts/pack_fer2013.py unpack --input=data/fer2013.npz.xz --output="$FER2013_DIR"
else
  echo "error: neither data/fer2013.tar.xz nor data/fer2013.npz.xz: make one (see the top of $0) and carry it" >&2
  exit 1
fi
# Decoded once here; the runs read the cache.
python3 -c "from ferjax import data; d = data.load(); print('FER2013:', len(d.train), len(d.val), len(d.test))"
# The runs share the accelerator's memory.
XLA_PYTHON_CLIENT_MEM_FRACTION=$(awk -v runs=${#names[@]} 'BEGIN { printf "%.3f", 0.9 / runs }')
export XLA_PYTHON_CLIENT_MEM_FRACTION

# shellcheck disable=SC2086  # FLAGS are words
fit_train_export() {  # NAME FLAGS
  local fitted
  if ! python3 scripts/fit_epochs.py $2 --until="$stop" --track_test --barrier="$work/barrier" \
      --side_by_side=${#names[@]} > "$work/$1.fit.log" 2>&1; then
    mkdir -p "$work/barrier" && touch "$work/barrier/failed.$1"  # the other fits stop waiting for this one
    tail -n 5 "$work/$1.fit.log"
    return 1
  fi
  grep -h "epochs fit" "$work/$1.fit.log"
  # The run starts as its fit ends, so the fit's time limit, counted from then, holds.
  fitted=$(grep -xE -- "--(epochs|time_limit_minutes)=[0-9.]+" "$work/$1.fit.log") &&
    (( $(wc -l <<< "$fitted") == 2 )) &&
    python3 -m experiments.train $2 $fitted --workdir="$work/$1" --track_test &&
    python3 scripts/export_model.py --workdir="$work/$1" --output="$work/$1/model" --max_mb=15
}

while sleep 60; do
  for name in "${names[@]}"; do
    grep -h "img/s\| done in " "$work/$name.log" 2>/dev/null | tail -n 1 | sed "s/^/$name: /" || true
  done
done &
monitor=$!
pids=() status=0
for i in "${!names[@]}"; do
  fit_train_export "${names[i]}" "${specs[i]}" > "$work/${names[i]}.log" 2>&1 & pids+=($!)
done
for i in "${!names[@]}"; do
  wait "${pids[i]}" || { echo "${names[i]}: failed:"; tail -n 5 "$work/${names[i]}.log"; status=1; }
done
kill "$monitor" 2>/dev/null || true
for name in "${names[@]}"; do
  grep -h "epochs fit\|best checkpoint" "$work/$name.log" | sed "s/^/$name: /" || true
  mkdir -p "$work/$name" && cp "$work/$name".*log "$work/$name/"
  tar -C "$work/$name" -cf "$out/$name.tar" --exclude=checkpoints .
done
exit $status
