#!/bin/bash
# GPU profile of the four tables on one device (the `run` device tool of this project), in two phases:
#   1. (first) the 512² MedSeg cells of the paper recipe: `lgnet-table1 --profile gpu` (train.preset:
#      paper, LG-Net's recipe at its own size, no override), one lane per row, seed-major, bounded by
#      PAPER_S seconds (PAPER_EPOCHS=N overrides the 120 epochs, recorded in each record;
#      PAPER_TABLES="lgnet-table1 lgnet-ablation" adds the ablation's five rows, in a later call);
#   2. the shrunk GPU cells of infnet-protocol (256²) and prnet-kaggle (64²), bounded by LANE_S seconds.
#      (The MedSeg tables' gpu profile is the paper preset, which refuses another size than 512²: no
#      shrunk MedSeg lanes — the first call's 256² MedSeg lanes would now stop at that check.)
# What finishes is recorded; finished cells are skipped when the script runs again. PAPER_S=0 or
# LANE_S=0 skips a phase.
#
# Dry run (no device, nothing installed or run): `DRY_RUN=1 bash docs/results/gpu_sweep.sh` (or
# `--dry-run`) prints every command it would run, in order, one a line: `prepare <table> <profile>
# [<image size>]` (the runner's data cache, made once before the lanes) and `lungseg results run …`.
# tests/experiments/test_gpu_sweep.py checks that each parses with the CLI's parser, names tables,
# profiles and rows that exist, and that the paper-recipe 512² cells come first.
#
# Carried beside the repo: .gpu-carry/data.tar.xz (the preprocessed .results-work/data caches of
# phase 2: medseg-256, covid-semiseg-256, kaggle-64-64-prnet-211-26-27 + *.source.json),
# .gpu-carry/raw/medseg-covid100 (the raw MedSeg slices, 15 MB: phase 1 preprocesses them at 512² on
# the device, which is smaller to carry than the 512² arrays) and .whl/ (mlflow-skinny 3.17.2 with its
# dependencies, monai 1.6.1, tqdm; python 3.12 wheels).
# Made here (repo root, venv active; the paths ignored by git, passed as `carry`):
#   python -c "from lungseg.experiments import runner as r, specs as t
#   for n, s in (('lgnet-table1', 256), ('infnet-protocol', 256), ('prnet-kaggle', 64)):
#       sp = t.TABLES[n]; r.prepare_dataset(sp, r.effective_profile(sp, 'gpu', {'image_size': s}),
#                                           data_root='../shared/data', workdir='.results-work')"
#   tar -C .results-work -cf - data/medseg-256 data/medseg-256.source.json data/covid-semiseg-256 \
#     data/covid-semiseg-256.source.json data/kaggle-64-64-prnet-211-26-27 \
#     data/kaggle-64-64-prnet-211-26-27.source.json | xz -9 > .gpu-carry/data.tar.xz
#   mkdir -p .gpu-carry/raw && cp -r ../shared/data/medseg-covid100 .gpu-carry/raw/
#   pip download mlflow-skinny==3.17.2 --python-version 3.12 --platform manylinux2014_x86_64 --only-binary=:all: -d .whl
#   pip download --no-deps monai==1.6.1 tqdm --python-version 3.12 --platform manylinux2014_x86_64 --only-binary=:all: -d .whl
#   then, on the device: PAPER_S=300 LANE_S=240 bash docs/results/gpu_sweep.sh
# The first call of docs/results.md "GPU runs" taught two fixes kept here: two threads a lane (the
# default 16 per process oversubscribed the 16 cores) and the records packed into one archive (the
# output transfer skipped nested folders). Results: tar -xzf gpu-results.tgz → res/.
set -u
DRY_RUN=${DRY_RUN:-0}
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
LANE_S=${LANE_S:-450}
PAPER_S=${PAPER_S:-450}
PAPER_EPOCHS=${PAPER_EPOCHS:-}
REPO=$PWD
W=/dev/shm/lungseg-w; [ -d /dev/shm ] || W=/tmp/lungseg-w
RES=/tmp/res
RAW=$REPO/.gpu-carry/raw
MED="--image-size 256 --base-channels 32 --epochs 20 --lr 0.001"

if [ "$DRY_RUN" = 1 ]; then
  # the commands, not their effects: `lungseg …` as a user would type it
  lungseg() { printf 'lungseg'; printf ' %s' "$@"; printf '\n'; }
  prepare() { echo "prepare $*"; }
else
  OUT=${OUT:?set OUT (the device tool sets it) or use DRY_RUN=1}
  mkdir -p "$W" "$RES" "$OUT/logs"
  tar -C "$W" -xJf .gpu-carry/data.tar.xz
  python3 -m pip install -q --no-index --find-links .whl mlflow-skinny==3.17.2 monai==1.6.1 tqdm > "$OUT/logs/pip.log" 2>&1 \
    || PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --no-index --find-links .whl mlflow-skinny==3.17.2 monai==1.6.1 tqdm >> "$OUT/logs/pip.log" 2>&1
  if ! python3 -c "import mlflow, monai, tqdm" >> "$OUT/logs/pip.log" 2>&1; then
    python3 -m pip install -q --no-deps --target /tmp/site .whl/*.whl >> "$OUT/logs/pip.log" 2>&1; export PYTHONPATH=/tmp/site
  fi
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
  export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 MLFLOW_DISABLE_TELEMETRY=true MLFLOW_ALLOW_FILE_STORE=true MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT=20
  nvidia-smi > "$OUT/logs/nvidia-smi.txt" 2>&1
  python3 -c "import torch, mlflow, monai; print(torch.__version__, torch.cuda.get_device_name(0), mlflow.__version__, monai.__version__)" > "$OUT/logs/env.txt" 2>&1
  lungseg() { python3 -m lungseg.cli "$@"; }
  # the runner's data cache of a table/profile (at an image size), made once before lanes share it
  prepare() {
    python3 -c "import sys; from lungseg.experiments import runner as r, specs as t
sp = t.TABLES[sys.argv[1]]; ov = {'image_size': int(sys.argv[3])} if len(sys.argv) > 3 else {}
r.prepare_dataset(sp, r.effective_profile(sp, sys.argv[2], ov), data_root=sys.argv[4] if len(sys.argv) > 4 else '$RAW', workdir='$W')" "$@"
  }
fi

lane() {  # name table rows profile data-root [profile overrides…]: seed-major, one tracking store a lane
  local name=$1 table=$2 rows=$3 profile=$4 root=$5; shift 5
  export MLFLOW_TRACKING_URI="file://$W/mlruns-$name"
  for s in 0 1 2; do
    lungseg results run --table "$table" --profile "$profile" --rows ${rows//,/ } --seeds $s \
      --data-root "$root" --workdir "$W" --results-dir "$RES" --no-report "$@"
  done
}
paper_lane() { lane "p-$2" "$1" "$2" gpu "$RAW" ${PAPER_EPOCHS:+--epochs "$PAPER_EPOCHS"}; }  # table row
small_lane() { lane "$1" "$2" "$3" gpu /nonexistent $4; }  # $4 unquoted: the overrides, split into words
export W RES RAW PAPER_EPOCHS

start() {  # seconds lane-function args… : bounded and in the background, or printed in a dry run
  local secs=$1; shift
  if [ "$DRY_RUN" = 1 ]; then "$@"; else
    timeout "$secs" bash -c "$(declare -f lungseg lane paper_lane small_lane); $(printf '%q ' "$@")" \
      > "$OUT/logs/lane-$2-$3.log" 2>&1 &
  fi
}

# phase 1: the paper recipe at 512² on MedSeg, first (data preprocessed once from the carried raw slices)
if [ "$PAPER_S" != 0 ]; then
  prepare lgnet-table1 gpu  # lgnet-table1 and lgnet-ablation share the medseg-512 cache
  for table in ${PAPER_TABLES:-lgnet-table1}; do
    case $table in
      lgnet-table1) rows="lgnet unet segnet u2net_p" ;;
      lgnet-ablation) rows="base mrc lga ff all" ;;
      *) echo "PAPER_TABLES: $table is not a 512² MedSeg table" >&2; exit 2 ;;
    esac
    for row in $rows; do start "$PAPER_S" paper_lane "$table" "$row"; done
    [ "$DRY_RUN" = 1 ] || wait
  done
fi
# phase 2: the shrunk GPU cells (the carried caches; no raw data on the device)
if [ "$LANE_S" != 0 ]; then
  for spec in "inf infnet-protocol lgnet,prnet,unet,attention_unet,unetpp" \
              "kag prnet-kaggle prnet,unet,unetpp,attention_unet,lgnet"; do
    set -- $spec
    ov="$MED"; [ "$2" = prnet-kaggle ] && ov="--base-channels 32 --epochs 20"
    start "$LANE_S" small_lane "$1" "$2" "$3" "$ov"
  done
  [ "$DRY_RUN" = 1 ] || wait
fi
[ "$DRY_RUN" = 1 ] && exit 0
cp "$W"/failures.log "$OUT/logs/" 2>/dev/null
tar -C /tmp -czf "$OUT/gpu-results.tgz" res
ls -R "$RES" | tail -n 80
echo done
