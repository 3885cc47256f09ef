#!/bin/bash
# One command on a lent GPU machine (docs/models.md "On a GPU"): the CUDA path check, then
# time-budgeted trainings continuing the bundled networks. Expects the training data in
# .devdata/train and the wheels the image lacks in .whl/ (both carried).
#   PLAN dc:    DeepCeNS alone (sharing the GPU with the dense trainings made its steps 5x
#               slower in session 7: 0.83 s against 0.15 s), with the wider scale augmentation.
#   PLAN dense: the U-Net and CenterUNet side by side (they share a GPU well).
#   PLAN all:   all four side by side, DeepCeNS started STAGGER s late (sessions 5 and 7).
#   PLAN lowres: session 19: the U-Net and CenterUNet with low-resolution crops made as the
#               pipeline makes them (half point-sampled, unsharp-masked), and a U-Net that
#               sees only such crops (a low-resolution specialist), side by side.
# Usage: bash tools/device_run.sh PLAN TRAIN_MINUTES [STAGGER]
set -u
PLAN=${1:-all}
MIN=${2:-7}
STAGGER=${3:-40}
case $PLAN in dc|dense|all|lowres) ;; *) echo "unknown plan '$PLAN': dc, dense, all or lowres"; exit 2 ;; esac
W=/tmp/run; mkdir -p $W
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || echo "wheels not installed"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
mount -o remount,size=32G /dev/shm 2>/dev/null; df -h /dev/shm | tail -1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision, timm; print(torch.__version__, torchvision.__version__, timm.__version__)"
T0=$(date +%s)
nvidia-smi dmon -s um -d 15 > $W/dmon.log 2>&1 & DMON=$!
D=.devdata/train; B=src/napari_deepcens/weights; PIDS=""; NAMES=""
# overridable per session (docs/models.md "On a GPU" lists each session's values)
WIDE=${WIDE:-"--scale-min 0.3 --scale-max 2.5 --lowres-probability 0.35"}
UNET=${UNET:-"--batch-size 16 --lr 1e-3"}
CU=${CU:-"--lr 1e-3"}
DC=${DC:-"--lr 4e-4"}
train() {  # NAME MINUTES ARGS...
  local name=$1 min=$2; shift 2
  python3 tools/train_timed.py $D -o $W/$name.safetensors --minutes $min "$@" > $W/$name.log 2>&1 &
  PIDS="$PIDS $!"; NAMES="$NAMES $name"
}
dense() {  # MINUTES WORKERS
  train unet $1 --model unet --init $B/unet_dsb2018.safetensors \
    --epochs 3 --crop 256 --workers $2 $UNET
  train cu_wide $1 --model centerunet --init $B/centerunet_dsb2018.safetensors \
    --epochs 3 --batch-size 16 --crop 256 --workers $2 $WIDE $CU
}
deepcens() {  # MINUTES WORKERS
  train dc_wide $1 --model deepcens --init $B/deepcens_dsb2018.safetensors \
    --epochs 3 --batch-size 8 --crop 256 --workers $2 --probe-steps 24 $WIDE $DC
}
lowres() {  # MINUTES WORKERS
  local match="--lowres-point 0.5 --lowres-sharpen --epochs 3 --crop 256 --batch-size 16"
  train unet_g $1 --model unet --init $B/unet_dsb2018.safetensors --workers $2 \
    --lowres-probability 0.35 --lr 5e-4 $match
  train unet_s $1 --model unet --init $B/unet_dsb2018.safetensors --workers $2 \
    --lowres-probability 1.0 --lowres-min 2.5 --lowres-max 5 --lr 3e-4 $match
  train cu_g $1 --model centerunet --init $B/centerunet_dsb2018.safetensors --workers $2 \
    --scale-min 0.3 --scale-max 2.5 --lowres-probability 0.35 --lr 5e-4 $match
}
[ "${CHECK:-1}" = 1 ] && timeout 150 python3 tools/cuda_check.py cuda > $W/cuda_check.log 2>&1 &
TS=$(date +%s)
case $PLAN in
  dc) deepcens $MIN 12 ;;
  dense) dense $MIN 6 ;;
  lowres) lowres $MIN 5 ;;
  all) dense $MIN 3; sleep $STAGGER; deepcens "$(python3 -c "print(round($MIN - $STAGGER / 60, 2))")" 6 ;;
esac
# a safety net 40 s past the budget, counted from the first training's start
LIMIT=$(python3 -c "print(int($MIN*60 + 40 - ($(date +%s) - $TS)))")
( sleep $LIMIT; pkill -f tools/train_timed.py ) & KILLER=$!
wait $PIDS; kill $KILLER $DMON 2>/dev/null
echo "== cuda_check"; tail -4 $W/cuda_check.log
for f in $NAMES; do echo "== $f"; grep -a -v "^\s*$" $W/$f.log | grep -a "probe\|trained\|epoch\|Error\|error\|Traceback" | tail -6; done
tail -5 $W/dmon.log
rm -f $W/*.ckpt
cd $W && tar cf all.tar $(ls *.safetensors *.log 2>/dev/null) && split -b 15000000 -d all.tar $OUT/all.tar.part && ls -la $OUT
echo "total $(( $(date +%s) - T0 )) s"
