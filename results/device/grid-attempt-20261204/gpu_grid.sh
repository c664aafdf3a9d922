#!/bin/bash
# Runs grid cells in parallel workers on the device machine; everything it keeps goes to $OUT.
# Env: GRID_BUDGET (seconds for the workers), DATA (folder with the split folders), GRIDARGS, MODELS, SPLITS_A/B, QUICK.
set -u -m   # -m: each background worker gets its own process group (stopped as a group)
cd "$(dirname "$0")/.."
T0=$(date +%s)
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
LOGS=/tmp/gridlogs; mkdir -p $LOGS
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2}
PY=${PY:-python3}
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c "import torch,sys;print(sys.version);print('torch',torch.__version__,'cuda',torch.cuda.is_available())"; nproc; uptime) > $LOGS/machine.txt 2>&1
cat $LOGS/machine.txt
# fail fast: the imports the cells need
$PY -c "import pykeen, server.downstream, client.kge.centralized, scripts.run_experiments; print('imports ok')" || { cp $LOGS/machine.txt $OUTDIR/; exit 3; }
G=/tmp/grid
main_sets=(${GRIDARGS})
base_sets=(--engine in-process --rounds ${ROUNDS:-20} --set downstream-protocols=as-trained --set downstream-seeds=1 ${BASEARGS:-})
run() { $PY scripts/run_experiments.py --out $G --export results/grid "$@"; }
worker_fed3() {  # model
  m=$1
  run --models $m --datasets $DATA/${SPLIT3} --settings fede "${main_sets[@]}"
  if [ -n "${STRUCT:-}" ]; then run --models $m --datasets $DATA/${SPLIT3} --settings fede --variant structure "${main_sets[@]}" --set simskip-augmentations=${STRUCT}; fi
  run --models $m --datasets $DATA/${SPLIT3} --settings isolation collection "${base_sets[@]}"
}
worker_more() {  # model splits...
  m=$1; shift
  for s in "$@"; do run --models $m --datasets $DATA/$s --settings fede "${main_sets[@]}"; done
}
pids=()
for m in ${MODELS}; do
  worker_fed3 $m > $LOGS/fed3-$m.log 2>&1 & pids+=($!)
  worker_more $m ${SPLITS_B} > $LOGS/b-$m.log 2>&1 & pids+=($!)
  if [ -n "${SPLITS_C:-}" ]; then worker_more $m ${SPLITS_C} > $LOGS/c-$m.log 2>&1 & pids+=($!); fi
done
# stop the workers at the budget, by PID (their children with them: own process groups not needed, kill the tree)
( sleep ${GRID_BUDGET:-400}; echo "budget reached: stopping workers"; for p in "${pids[@]}"; do kill -TERM -- -$p 2>/dev/null; done ) & watchdog=$!
for p in "${pids[@]}"; do wait $p; done
kill -- -$watchdog 2>/dev/null
echo "workers ended after $(( $(date +%s) - T0 )) s"; uptime
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv >> $LOGS/machine.txt 2>&1
# partial cells: their cell.json (run_seconds of a finished KGE step)
mkdir -p $LOGS/partial; for f in $(find $G -name cell.json); do d=$(echo ${f#$G/} | tr '/' '_'); cp $f $LOGS/partial/$d; done
for f in $LOGS/*.log; do tail -c 200000 $f > $f.tail; mv $f.tail $f; done
tar -czf $OUTDIR/grid.tar.gz results/grid -C /tmp gridlogs 2>/dev/null || tar -czf $OUTDIR/grid.tar.gz -C /tmp gridlogs
ls -la $OUTDIR; find results/grid -name cell.json | sort
