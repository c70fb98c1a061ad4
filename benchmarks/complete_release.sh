#!/usr/bin/env bash
# The official vLLM wheel of a release, completed for a DGX Spark (12.1a) by spark-build's own
# command: `invoke build-vllm --prefer-wheel` finds the wheel on the package index, its validate
# finds `_qutlass_C` with SM100 code only, and the completion builds that one target from the
# release's sdist (package index) with CUTLASS and qutlass from ../shared/mirror, against the
# torch the wheel pins, swaps it in, and validates the result. Then this script checks what the
# issue asks of the result: `invoke validate --arch 12.1a` exits 0, every other file of the wheel
# is byte-identical to the official one, and every undefined symbol of the rebuilt extension is
# defined by a library it links (abi_check.py).
#
# Downloads: the official wheel (≈ 300 MB), the sdist (≈ 40 MB), torch with its CUDA packages
# (several GB), once into WORK. Compiles 8 objects (≈ 430 CPU-s in the 0.13.0 profile).
# Usage: benchmarks/complete_release.sh WORK [VERSION]   (run from the repository root)
set -euo pipefail
ROOT=$(pwd)
WORK=${1:?usage: benchmarks/complete_release.sh WORK [VERSION]}
VERSION=${2:-0.26.0}
MIRROR=${SPARK_BUILD_TEST_MIRROR:-$ROOT/../shared/mirror}
case "$VERSION" in
  0.26.0) TORCH=2.11.0 CUTLASS=cutlass-v4.4.2-headers.tar.gz ;;  # requirements/cuda.txt, CUTLASS_REVISION
  *) echo "error: no torch/CUTLASS pins known here for vLLM $VERSION" >&2
     echo "  fix: run with 0.26.0, or add the release's torch pin and CUTLASS archive to this script" >&2
     exit 2 ;;
esac
for file in "$CUTLASS" qutlass.bundle SHA256SUMS; do
  if [ ! -f "$MIRROR/$file" ]; then
    echo "error: $MIRROR/$file is missing" >&2
    echo "  fix: lay ../shared/mirror beside the checkout or set SPARK_BUILD_TEST_MIRROR" >&2
    exit 2
  fi
done
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
[ -x "$ROOT/.venv/bin/invoke" ] || { python3 -m venv "$ROOT/.venv" && "$ROOT/.venv/bin/pip" install -q -e "$ROOT"; }

# The torch the official wheel pins, with cmake and ninja: the interpreter the completion builds
# with (--torch existing) and the validate venvs inherit.
if ! "$WORK/torch/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH')" 2>/dev/null; then
  rm -rf "$WORK/torch"
  python3 -m venv "$WORK/torch"
  "$WORK/torch/bin/pip" install -q "torch==$TORCH" "cmake>=3.26" ninja
fi
sha=$(awk -v f="$CUTLASS" '$2 == f {print $1}' "$MIRROR/SHA256SUMS")
cat > "$WORK/spark-build.yaml" <<EOF
spark_build:
  source_mirrors:
    cutlass: $MIRROR/$CUTLASS#sha256=$sha
    qutlass: $MIRROR/qutlass.bundle
EOF

cd "$ROOT"
start=$(date +%s)
set +e
.venv/bin/invoke -f "$WORK/spark-build.yaml" build-vllm --prefer-wheel --ref "v$VERSION" --arch 12.1a \
  --torch existing --python "$WORK/torch/bin/python" --workdir "$WORK/work" --no-serve 2>&1 | tee "$WORK/complete.out"
status=${PIPESTATUS[0]}
set -e
echo "build-vllm --prefer-wheel: exit $status in $(( $(date +%s) - start )) s"
[ "$status" = 0 ] || exit "$status"

completed=$(find "$WORK/work" -path "*/completed/*" -name "vllm-$VERSION+*.whl" | head -1)
official=$(find "$WORK/work" -name "vllm-$VERSION-cp38-abi3-*.whl" ! -path "*/completed/*" | head -1)
echo "completed: $(basename "$completed") sha256 $(sha256sum "$completed" | cut -d' ' -f1)"
echo "official:  $(basename "$official") sha256 $(sha256sum "$official" | cut -d' ' -f1)"

start=$(date +%s)
.venv/bin/invoke validate --arch 12.1a --torch existing --python "$WORK/torch/bin/python" \
  --logs-dir "$WORK/validate-logs" --wheel "$completed" 2>&1 | tee "$WORK/validate.out"
echo "invoke validate --arch 12.1a: exit ${PIPESTATUS[0]} in $(( $(date +%s) - start )) s"
.venv/bin/python benchmarks/abi_check.py "$official" "$completed" "$WORK/torch/bin/python" | tee "$WORK/abi.out"
