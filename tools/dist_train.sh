#!/usr/bin/env bash
# Multi-process training with torchrun (gloo on CPU, NCCL on GPUs):
#   bash tools/dist_train.sh CONFIG NPROC [train.py options...]
set -euo pipefail
CONFIG=$1
NPROC=$2
shift 2
PORT=${PORT:-29500}
cd "$(dirname "$0")/.."
exec torchrun --nproc_per_node="$NPROC" --master_port="$PORT" tools/train.py "$CONFIG" --launcher pytorch "$@"
