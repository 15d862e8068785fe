#!/usr/bin/env bash
# Create .venv and install tiledsr into it (idempotent).
#   scripts/setup.sh        runtime: tiledsr + the ncnn and OpenVINO backends (OpenVINO: a 59 MB
#                           wheel, the fastest CPU backend; see BENCHMARKS.md)
#   scripts/setup.sh test   also the test dependencies
# torch is installed first at exactly 2.13.0 (the CPU wheel these machines carry), so no
# later step can pull a multi-GB CUDA build; torchvision is never installed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() {  # quiet install; drop the local mirrors' harmless "Location ... is ignored" warnings
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
extras=ncnn,openvino
[ "${1:-}" = "test" ] && extras=ncnn,openvino,test
pip "torch==2.13.0"
pip -e ".[$extras]"
.venv/bin/python -c "import tiledsr, torch" || { echo "setup failed: tiledsr or torch does not import" >&2; exit 1; }
