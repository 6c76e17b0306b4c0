#!/usr/bin/env bash
# What benchmarks/gpu_check.py needs on a bare GPU machine that has its own Python, PyTorch, torchvision, OpenCV,
# matplotlib, TensorBoard and pytest but no package registry: the rest travels as wheels in .whl/ (about 4 MiB).
#
#   bash benchmarks/gpu_setup.sh wheels          # here, with pip and a registry: fill .whl/ for the GPU's Python
#   source benchmarks/gpu_setup.sh install       # there: install them into /tmp/site and put it and this checkout
#                                                # on PYTHONPATH; then python benchmarks/gpu_check.py
#
# GPU_PYTHON (default 3.12) is the GPU machine's Python version. fvcore is published as an sdist only: its wheel is
# built here (pure Python). pycocotools and faster-coco-eval are compiled: their manylinux wheels for that Python.
[[ "${BASH_SOURCE[0]}" == "$0" ]] && set -euo pipefail  # not when sourced: the caller's shell keeps its options
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="$ROOT/.whl"
PURE="fvcore==0.1.5.post20221221 iopath==0.1.10 yacs==0.1.8 termcolor==3.3.0"
BINARY="pycocotools==2.0.11 faster-coco-eval==1.8.0"

case "${1:-}" in
  wheels)
    mkdir -p "$WHEELS"
    rm -f "$WHEELS"/*.whl
    # shellcheck disable=SC2086
    python3 -m pip wheel -q --no-deps -w "$WHEELS" $PURE
    for package in $BINARY; do
      python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" "$package"
    done
    grep -qx '/.whl/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.whl/' >> "$ROOT/.git/info/exclude"
    ls -la "$WHEELS"
    du -sh "$WHEELS"
    ;;
  install)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$WHEELS"/*.whl
    export PYTHONPATH="/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    python3 -c "import adet, fvcore, pycocotools, torch; print('gpu_setup: adet', adet.__version__, 'torch', \
torch.__version__, 'CUDA', torch.cuda.is_available())"
    ;;
  *)
    echo "usage: bash benchmarks/gpu_setup.sh wheels | source benchmarks/gpu_setup.sh install" >&2
    return 2 2>/dev/null || exit 2
    ;;
esac
