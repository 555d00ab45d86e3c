#!/bin/bash
# The README demo (params.yaml, LG-Net) trained per seed in fp32 and in bf16, each evaluated in fp32: the
# quality side of `train.precision` (#24; docs/training.md, "Precision and compilation"). bf16 is FORCED
# (LUNGSEG_FORCE_BF16_EMULATION=1), so on a CPU without avx512_bf16/AMX it runs emulated, 5-7x
# slower. One run at a time, one thread, nice 10; resumable (a seed/precision with metrics is skipped).
#   usage: bench/precision_quality.sh OUTDIR [SEED ...]     (default seeds 0 1 2 3 4; DATA=data/processed/medseg)
set -u
T=$(realpath -m "${1:?usage: bench/precision_quality.sh OUTDIR [SEED ...]}"); shift
cd "$(dirname "$0")/.."
source "${VENV:-.venv}/bin/activate"
mkdir -p "$T"
export MLFLOW_TRACKING_URI=sqlite:///$T/m.db OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MLFLOW_DISABLE_TELEMETRY=true
DATA=${DATA:-data/processed/medseg}
cp params.yaml "$T/params.base.yaml"
for s in ${@:-0 1 2 3 4}; do
  for p in fp32 bf16; do
    name=s$s-$p
    [ -f "$T/$name.eval/metrics.json" ] && continue
    python - "$T/params.base.yaml" "$T/$name.yaml" "$s" "$p" <<'PY'
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
d["train"]["seed"] = int(sys.argv[3]); d["train"]["precision"] = sys.argv[4]
d["mlflow"]["experiment"] = "precision-quality"
yaml.safe_dump(d, open(sys.argv[2], "w"), sort_keys=False)
PY
    echo "$(date -u +%T) start $name load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$T/log.txt"
    t0=$(date +%s)
    # bf16 forced: emulated on a CPU without native bf16 (lungseg.training.setup.bf16_emulation_forced)
    LUNGSEG_FORCE_BF16_EMULATION=$([ "$p" = bf16 ] && echo 1 || echo 0) nice -n 10 \
        python -m lungseg.cli train --data "$DATA" --output "$T/$name.model" --params "$T/$name.yaml" \
        > "$T/$name.train.log" 2>&1
    rc=$?
    t1=$(date +%s)
    nice -n 10 python -m lungseg.cli evaluate --model "$T/$name.model" --data "$DATA" --output "$T/$name.eval" \
        --params "$T/$name.yaml" > "$T/$name.eval.log" 2>&1
    echo "$(date -u +%T) done $name rc $rc train_s $((t1-t0)) load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$T/log.txt"
  done
done
python - "$T" <<'PY'
import json, pathlib, sys
from scipy.stats import wilcoxon
T = pathlib.Path(sys.argv[1])
rows = []
for f in sorted(T.glob("s*-fp32.eval/metrics.json")):
    seed = f.parent.name.split("-")[0]
    b = T / f"{seed}-bf16.eval/metrics.json"
    if b.is_file():
        m32, m16 = json.loads(f.read_text()), json.loads(b.read_text())
        rows.append((seed, m32["dice_mean"], m16["dice_mean"], m32["roc_auc_pooled"], m16["roc_auc_pooled"]))
print("seed  dice_fp32  dice_bf16  auc_fp32  auc_bf16")
for r in rows:
    print(f"{r[0]:>4}  {r[1]:.3f}      {r[2]:.3f}      {r[3]:.3f}     {r[4]:.3f}")
if len(rows) >= 2:
    d = [r[2] - r[1] for r in rows]
    a = [r[4] - r[3] for r in rows]
    print(f"bf16 - fp32: Dice {sum(d) / len(d):+.3f} (Wilcoxon p {wilcoxon(d).pvalue:.2f}), "
          f"AUC {sum(a) / len(a):+.3f} (p {wilcoxon(a).pvalue:.2f}), n {len(rows)}")
PY
