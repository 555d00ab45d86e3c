#!/bin/bash
# GPU profile of the four tables on one device (the `run` device tool of this project), six lanes in
# parallel, each lane seed-major (seed 0 of every row, then 1, then 2) and bounded by LANE_S seconds:
# what finishes is recorded. Carried beside the repo: .gpu-carry/data.tar.xz (the preprocessed
# .results-work/data caches: medseg-256, covid-semiseg-256, kaggle-64-64 + *.source.json) and .whl/
# (mlflow-skinny 3.17.2 with its dependencies, monai 1.6.1, tqdm; python 3.12 wheels).
# Made here (repo root, venv active; both paths listed in .git/info/exclude, passed as `carry`):
#   python -c "from lungseg.experiments import runner as r, specs as t
#   for n, s in (('lgnet-table1', 256), ('infnet-protocol', 256), ('prnet-kaggle', 64)):
#       sp = t.TABLES[n]; r.prepare_dataset(sp, r.effective_profile(sp, 'gpu', {'image_size': s}),
#                                           data_root='../shared/data', workdir='.results-work')"
#   tar -C .results-work -cf - data/medseg-256 data/medseg-256.source.json data/covid-semiseg-256 \
#     data/covid-semiseg-256.source.json data/kaggle-64-64 data/kaggle-64-64.source.json | xz -9 > .gpu-carry/data.tar.xz
#   pip download mlflow-skinny==3.17.2 --python-version 3.12 --platform manylinux2014_x86_64 --only-binary=:all: -d .whl
#   pip download --no-deps monai==1.6.1 tqdm --python-version 3.12 --platform manylinux2014_x86_64 --only-binary=:all: -d .whl
#   cp docs/results/gpu_sweep.sh .gpu-carry/   # then, on the device: LANE_S=430 bash .gpu-carry/gpu_sweep.sh
# This is the first call of docs/results.md "GPU runs", with the two fixes learnt there: two threads
# a lane (the default 16 per process oversubscribed the 16 cores) and the records packed into one
# archive (the output transfer skipped nested folders). Results: tar -xzf gpu-results.tgz → res/.
set -u
LANE_S=${LANE_S:-450}
REPO=$PWD
W=/dev/shm/lungseg-w; [ -d /dev/shm ] || W=/tmp/lungseg-w
RES=/tmp/res
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
MED="--image-size 256 --base-channels 32 --epochs 20 --lr 0.001"
lane() {
  local name=$1 table=$2 rows=$3 ov=$4
  export MLFLOW_TRACKING_URI="file://$W/mlruns-$name"
  for s in 0 1 2; do
    python3 -m lungseg.cli results run --table "$table" --profile gpu --rows $rows --seeds $s \
      --data-root /nonexistent --workdir "$W" --results-dir "$RES" --no-report $ov
  done
}
export -f lane; export W OUT MED RES
for spec in "t1a lgnet-table1 lgnet" "t1b lgnet-table1 unet,segnet,u2net_p" "abA lgnet-ablation base,mrc,lga" \
            "abB lgnet-ablation ff,all" "inf infnet-protocol lgnet,prnet,unet,attention_unet,unetpp" \
            "kag prnet-kaggle prnet,unet,unetpp,attention_unet,lgnet"; do
  set -- $spec
  ov="$MED"; [ "$2" = prnet-kaggle ] && ov="--base-channels 32 --epochs 20"
  timeout "$LANE_S" bash -c "lane $1 $2 '${3//,/ }' '$ov'" > "$OUT/logs/lane-$1.log" 2>&1 &
done
wait
cp "$W"/failures.log "$OUT/logs/" 2>/dev/null
tar -C /tmp -czf "$OUT/gpu-results.tgz" res
ls -R "$RES" | tail -n 80
echo done
