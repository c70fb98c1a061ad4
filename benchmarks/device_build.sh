#!/usr/bin/env bash
# The full vLLM 0.13.0 build by spark-build's own command on a machine with no package registry
# and its own torch (the GPU machine: /opt/torch/.venv, torch 2.11.0+cu130, Python 3.12).
#
# Run from the repository root, with the carried folders beside it:
#   .whl/            spark-build's dependencies, the build requirements the machine lacks, and
#                    ninja-1.13.2.tar.gz (the ninja step builds the scheduling Ninja from it)
#   .device/mirror/  vLLM's sdist, the git bundles and header archives of ../shared/mirror, and
#                    a triton_kernels stand-in archive (Triton v3.5.0 is not mirrored here)
# Usage: benchmarks/device_build.sh WORK [build-vllm|arch-plan] [extra options…]
# Starts the build detached (setsid) and returns; WORK/build.out and WORK/logs/latest follow it,
# benchmarks/device_poll.sh WORK [SECONDS] waits for it (returning early when it ends) and copies them.
set -euo pipefail
ROOT=$(pwd)
WORK=${1:?usage: device_build.sh WORK [build-vllm|arch-plan] [options]}
TASK=${2:-build-vllm}
shift 2 || shift $#
TORCH_PYTHON=${TORCH_PYTHON:-/opt/torch/.venv/bin/python}
MIRROR=$ROOT/.device/mirror
mkdir -p "$WORK"

# spark-build in its own venv that also sees the interpreter's packages (rich, psutil, packaging)
# and this checkout (a .pth line: no build backend needed).
if [ ! -x "$WORK/sb/bin/invoke" ]; then
  "$TORCH_PYTHON" -m venv "$WORK/sb"
  { echo "$ROOT"; "$TORCH_PYTHON" -c 'import site; print("\n".join(site.getsitepackages()))'; } \
    > "$(echo "$WORK"/sb/lib/python3*/site-packages)/spark_build_inherit.pth"
  "$WORK/sb/bin/pip" install -q --no-index --find-links "$ROOT/.whl" \
    invoke gitpython tenacity pyelftools python-crontab uv nvidia-cuda-cuobjdump
fi

# vLLM 0.13.0 as the tagged git repository the clone step expects.
if [ ! -d "$WORK/vllm/.git" ]; then
  rm -rf "$WORK/vllm" && mkdir -p "$WORK/vllm"
  tar xzf "$MIRROR/vllm-0.13.0.tar.gz" -C "$WORK/vllm" --strip-components=1
  git -C "$WORK/vllm" init -q -b main
  git -C "$WORK/vllm" add -A -f
  git -C "$WORK/vllm" -c user.name=spark-build -c user.email=spark-build@localhost commit -qm "vLLM 0.13.0 sdist"
  git -C "$WORK/vllm" tag v0.13.0
fi

sha() { sha256sum "$1" | cut -d' ' -f1; }
cat > "$WORK/invoke.yaml" <<EOF
spark_build:
  offline: true
  source_mirrors:
    cutlass: $MIRROR/cutlass-v4.2.1-headers.tar.gz#sha256=$(sha "$MIRROR/cutlass-v4.2.1-headers.tar.gz")
    vllm-flash-attn: $MIRROR/flash-attention.bundle
    vllm-flash-attn/csrc/cutlass: $MIRROR/cutlass-62750a2b-headers.tar.gz#sha256=$(sha "$MIRROR/cutlass-62750a2b-headers.tar.gz")
    flashmla: $MIRROR/FlashMLA.bundle
    qutlass: $MIRROR/qutlass.bundle
    triton_kernels: $MIRROR/triton-kernels-standin.tar.gz#sha256=$(sha "$MIRROR/triton-kernels-standin.tar.gz")
EOF

cd "$WORK"
setsid nohup "$WORK/sb/bin/invoke" -r "$ROOT" -f "$WORK/invoke.yaml" "$TASK" \
  --repo "$WORK/vllm" --ref v0.13.0 --arch 12.1a \
  --torch existing --python "$TORCH_PYTHON" --wheels "$ROOT/.whl" \
  --workdir "$WORK/work" --logs-dir "$WORK/logs" "$@" > "$WORK/build.out" 2>&1 < /dev/null &
echo "started $TASK (pid $!): $WORK/build.out"
