#!/usr/bin/env bash
# The full vLLM 0.13.0 build by spark-build's own command on a machine with no package registry
# and its own torch (the GPU machine: /opt/torch/.venv, torch 2.11.0+cu130, Python 3.12).
#
# Run from the repository root, with the carried folders beside it:
#   .whl/            spark-build's dependencies, the build requirements the machine lacks, and
#                    ninja-1.13.2.tar.gz (the ninja step builds the scheduling Ninja from it)
#   .device/mirror/  vLLM's sdist, the git bundles and header archives of ../shared/mirror, and
#                    a triton_kernels stand-in archive (Triton v3.5.0 is not mirrored here)
# Usage: benchmarks/device_build.sh WORK [build-vllm|arch-plan|stage] [extra options…]
#
# It first copies everything the run reads onto WORK, the machine's own disk: the checkout
# (WORK/stage/checkout: spark-build and its patches), the wheels (WORK/stage/wheels) and the
# mirrors (WORK/stage/mirror). A device call replaces the checkout it runs in and deletes the
# carried folders a later call does not name, so a build still running during a later call (a
# poll) must read nothing from the checkout it was started from. `stage` stops after the copy.
# Then it starts the build detached (setsid) and returns; WORK/build.out and WORK/logs/latest
# follow it, and benchmarks/device_poll.sh WORK [SECONDS] waits for it and returns its logs.
set -euo pipefail
ROOT=$(pwd)
WORK=${1:?usage: device_build.sh WORK [build-vllm|arch-plan|stage] [options]}
TASK=${2:-build-vllm}
shift 2 || shift $#
TORCH_PYTHON=${TORCH_PYTHON:-/opt/torch/.venv/bin/python}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
STAGE=$WORK/stage

if [ -f "$WORK/build.pid" ] && kill -0 "$(cat "$WORK/build.pid")" 2>/dev/null; then
  echo "error: the build started in $WORK is still running (pid $(cat "$WORK/build.pid"))" >&2
  echo "  fix: follow it with benchmarks/device_poll.sh $WORK, or use another WORK" >&2
  exit 2
fi
for carried in .whl .device/mirror; do
  if [ ! -d "$ROOT/$carried" ]; then
    echo "error: $ROOT/$carried is missing" >&2
    echo "  fix: run from the repository root and name .whl and .device in the call's carry" >&2
    exit 2
  fi
done

# The copy goes to a new folder that replaces the old one only when whole.
rm -rf "$STAGE.new"
mkdir -p "$STAGE.new/checkout"
excludes=(--exclude=./.git --exclude=./.venv --exclude=./.whl --exclude=./.device --exclude=__pycache__)
case "$WORK/" in "$ROOT/"*) excludes+=("--exclude=./${WORK#"$ROOT"/}") ;; esac
tar -C "$ROOT" "${excludes[@]}" -cf - . | tar -C "$STAGE.new/checkout" -xf -
cp -a "$ROOT/.whl" "$STAGE.new/wheels"
cp -a "$ROOT/.device/mirror" "$STAGE.new/mirror"
rm -rf "$STAGE"
mv "$STAGE.new" "$STAGE"
echo "staged on $STAGE: checkout $(du -sh "$STAGE/checkout" | cut -f1), wheels $(du -sh "$STAGE/wheels" | cut -f1), mirror $(du -sh "$STAGE/mirror" | cut -f1)"
if [ "$TASK" = stage ]; then
  exit 0
fi

CHECKOUT=$STAGE/checkout
WHEELS=$STAGE/wheels
MIRROR=$STAGE/mirror

# spark-build in its own venv that also sees the interpreter's packages (rich, psutil, packaging)
# and the staged checkout (a .pth line, rewritten every time so that a venv made by an older
# script never reads the call's checkout: no build backend needed).
[ -x "$WORK/sb/bin/python" ] || "$TORCH_PYTHON" -m venv "$WORK/sb"
{ echo "$CHECKOUT"; "$TORCH_PYTHON" -c 'import site; print("\n".join(site.getsitepackages()))'; } \
  > "$(echo "$WORK"/sb/lib/python3*/site-packages)/spark_build_inherit.pth"
if [ ! -x "$WORK/sb/bin/invoke" ]; then
  "$WORK/sb/bin/pip" install -q --no-index --find-links "$WHEELS" \
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
rm -f "$WORK/build.out"
setsid nohup "$WORK/sb/bin/invoke" -r "$CHECKOUT" -f "$WORK/invoke.yaml" "$TASK" \
  --repo "$WORK/vllm" --ref v0.13.0 --arch 12.1a \
  --torch existing --python "$TORCH_PYTHON" --wheels "$WHEELS" \
  --workdir "$WORK/work" --logs-dir "$WORK/logs" "$@" > "$WORK/build.out" 2>&1 < /dev/null &
echo $! > "$WORK/build.pid"
echo "started $TASK (pid $!): $WORK/build.out"
