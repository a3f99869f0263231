#!/usr/bin/env bash
# One prepared run of benchmarks/gpu.py on a borrowed GPU machine with no internet.
#
# Run from the repository root. The machine has Python 3.12 and torch (with torchvision,
# torchmetrics, numpy, pyyaml, ...) but not Composer or pydantic: their wheels travel in .whl/
# (pure Python, or cp312 manylinux; fetched with `pip download`, see benchmarks/README.md) and
# are installed into /tmp/site, ahead of the system packages on PYTHONPATH. fvcore is not
# needed (effrecipes reports its count as null when it is missing).
#
#   bash benchmarks/gpu_run.sh                # full run (an estimated 3-5 min on an H200)
#   bash benchmarks/gpu_run.sh --quick        # extra arguments go to benchmarks/gpu.py
#
# Writes $OUT/gpu.json and $OUT/gpu.log ($OUT defaults to /tmp/effrecipes-gpu-out).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/effrecipes-gpu-out}"
mkdir -p "$OUT"

ls .whl/*.whl > /dev/null  # fails here, clearly, when the wheels were not carried
if python3 -m pip --version > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
else  # no pip: a wheel is a zip of its installed files
    for w in .whl/*.whl; do python3 -m zipfile -e "$w" /tmp/site; done
fi
export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled WANDB_SILENT=true

{
    echo "# $(date -Is)  $(python3 --version)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv,noheader || true
    python3 -c "import torch, composer, pydantic; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), '| composer', composer.__version__, '| pydantic', pydantic.__version__)"
} 2>&1 | tee "$OUT/gpu.log"
python3 benchmarks/gpu.py --out "$OUT/gpu.json" "$@" 2>&1 | tee -a "$OUT/gpu.log"
