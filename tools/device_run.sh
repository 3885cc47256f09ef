#!/bin/bash
# One lease of a GPU machine (tools/README in docs/models.md "Trained on a GPU"): CUDA path
# check, GPU timings, then four time-budgeted trainings side by side. Expects the training
# data in .devdata/train and the wheels the image lacks in .whl/ (both carried).
# Usage: bash tools/device_run.sh TRAIN_MINUTES
set -u
MIN=${1:-5.5}
W=/tmp/run; mkdir -p $W
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || echo "wheels not installed"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
mount -o remount,size=32G /dev/shm 2>/dev/null; df -h /dev/shm | tail -1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision, timm; print(torch.__version__, torchvision.__version__, timm.__version__)"
T0=$(date +%s)
timeout 70 python3 tools/cuda_check.py cuda > $W/cuda_check.log 2>&1; echo "cuda_check rc $?"; tail -4 $W/cuda_check.log
for m in unet deepcens; do
  timeout 45 python3 bench/bench_speed.py --device cuda --model $m --threads 8 > $W/bench_$m.log 2>&1
  echo "bench $m rc $?"; cat $W/bench_$m.log | grep -v Warning | tail -5
done
echo "checks took $(( $(date +%s) - T0 )) s"
nvidia-smi dmon -s um -d 15 > $W/dmon.log 2>&1 & DMON=$!
PIDS=""
D=.devdata/train; B=src/napari_deepcens/weights
python3 tools/train_timed.py $D -o $W/unet12.safetensors --model unet --init $B/unet_dsb2018.safetensors \
  --minutes $MIN --epochs 3 --batch-size 16 --crop 256 --lr 1e-3 --workers 4 > $W/unet12.log 2>&1 & PIDS="$PIDS $!"
python3 tools/train_timed.py $D -o $W/unet16.safetensors --model unet --base-channels 16 \
  --minutes $MIN --epochs 3 --batch-size 16 --crop 256 --lr 2e-3 --workers 4 > $W/unet16.log 2>&1 & PIDS="$PIDS $!"
python3 tools/train_timed.py $D -o $W/dc14.safetensors --model deepcens --init $B/deepcens_dsb2018.safetensors \
  --minutes $MIN --epochs 3 --batch-size 8 --crop 256 --lr 4e-4 --workers 2 --probe-steps 24 > $W/dc14.log 2>&1 & PIDS="$PIDS $!"
python3 tools/train_timed.py $D -o $W/dc50.safetensors --model deepcens --backbone resnest50d --grow-from $B/deepcens_dsb2018.safetensors \
  --minutes $MIN --epochs 3 --batch-size 8 --crop 256 --lr 4e-4 --workers 2 --probe-steps 24 > $W/dc50.log 2>&1 & PIDS="$PIDS $!"
LIMIT=$(python3 -c "print(int($MIN*60+45))")
( sleep $LIMIT; pkill -f tools/train_timed.py ) & KILLER=$!
wait $PIDS; kill $KILLER $DMON 2>/dev/null
for f in unet12 unet16 dc14 dc50; do echo "== $f"; grep -a -v "^\s*$" $W/$f.log | grep -a "probe\|trained\|epoch\|Error\|error\|Traceback" | tail -6; done
rm -f $W/*_grown.safetensors $W/*.ckpt
cd $W && tar cf all.tar $(ls *.safetensors *.log 2>/dev/null) && split -b 15000000 -d all.tar $OUT/all.tar.part && ls -la $OUT
echo "total $(( $(date +%s) - T0 )) s"
