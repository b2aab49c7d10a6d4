#!/usr/bin/env bash
# Every GPU-only check of fi-dist in one run, for a borrowed GPU machine (CI has none).
#
#   bash bench/gpu_checks.sh [WHEELS_DIR]     logs go to $OUT (default /tmp/fi-dist-gpu)
#
# The machine's python must already have torch with CUDA. fi-dist is not installed there:
# its sources are copied into a private site dir in the package layout setuptools ships
# (launchers/ as fi_dist.launchers), plus wheels of what the machine lacks
# (debugpy, json-five, sly: `pip download --no-deps ... -d WHEELS_DIR`).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
wheels=${1:-$repo/.whl}
out=${OUT:-/tmp/fi-dist-gpu}
site=/tmp/fi-dist-site
mkdir -p "$out" && rm -rf "$site" && mkdir -p "$site"
if compgen -G "$wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheels"/*.whl || exit 1
fi
cp -r "$repo/fi_dist" "$site/" && cp -r "$repo/launchers" "$site/fi_dist/launchers"
export PYTHONPATH=$site PYTHONUNBUFFERED=1
cd /tmp  # not the repo: its fi_dist/ (without launchers/) would shadow the copy
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda)'
  nproc; df -h /tmp | tail -1; } 2>&1 | tee "$out/machine.log"
rc=0
step() { local name=$1; shift; echo "== $name"; "$@" 2>&1 | tee "$out/$name.log"; local r=$?
         echo "== $name: exit $r"; [ $r = 0 ] || rc=1; }
step checkpoint_gpu python3 "$repo/bench/gpu_checkpoint_check.py" --mb 1024
step idle_nvml python3 "$repo/bench/gpu_idle_check.py"
step checkpoint_bench timeout 240 python3 "$repo/bench/checkpoint_bench.py" --device cuda \
  --mb 1024 --ranks 1 --repeats 3 --preempt-trials 0
step run_nccl timeout 150 python3 -m fi_dist.cli run --debug --idle --idle-sampler nvml \
  --nnodes 1 --nproc-per-node 1 "$repo/examples/ddp_train.py" -- --steps 40 \
  --ckpt-dir /tmp/fi-dist-gpu-ckpt --ckpt-every 10
exit $rc
