#!/usr/bin/env bash
# The hidden cost of native 12.x kernels, and the JIT rate, measured on the GPU machine.
#
# For a subset of vLLM 0.13.0's FA2 objects (flash-attention 86f8f157, CUTLASS 62750a2b), one
# compile each way with /usr/bin/time -v: as vLLM builds them today (`-gencode sm_80` + PTX
# `compute_80`, which a GB10 runs only by PTX JIT) and for the 12.x family (`sm_120` SASS, which
# a GB10 runs natively). The sm_80+PTX compile keeps its PTX (--keep), and ptxas then compiles
# that PTX for sm_120 and for sm_80 under /usr/bin/time -v: what the driver's JIT does at the
# first model load. vLLM's own PTX-only families (Hadamard, Marlin, GPTQ Marlin, Marlin MoE)
# are compiled once for sm_120 to prove they compile there.
#
# Run from the repository root with .device/mirror/ holding vllm-0.13.0.tar.gz,
# flash-attention.bundle, cutlass-62750a2b-headers.tar.gz and cutlass-v4.2.1-headers.tar.gz.
# Usage: [FA2_OBJECTS="flash_fwd_… …"] [FAMILIES=0] [TORCH_DIR=…] benchmarks/native_cost.sh WORK
#        — starts detached (setsid) and returns;
#        WORK/done appears when every job has ended; WORK/results/*.time hold time -v.
set -euo pipefail
ROOT=$(pwd)
WORK=${1:?usage: native_cost.sh WORK}
MIRROR=$ROOT/.device/mirror
PY=${PYTHON:-python3}
mkdir -p "$WORK/results" "$WORK/keep" "$WORK/obj"

tar xzf "$MIRROR/vllm-0.13.0.tar.gz" -C "$WORK"
git clone -q -b main "$MIRROR/flash-attention.bundle" "$WORK/fa"
mkdir -p "$WORK/fa/csrc/cutlass" "$WORK/cutlass"
tar xzf "$MIRROR/cutlass-62750a2b-headers.tar.gz" -C "$WORK/fa/csrc/cutlass"
tar xzf "$MIRROR/cutlass-v4.2.1-headers.tar.gz" -C "$WORK/cutlass"
V=$WORK/vllm-0.13.0
(cd "$V/csrc/quantization/gptq_marlin" && $PY generate_kernels.py 12.0) > "$WORK/results/gen-marlin.log" 2>&1
(cd "$V/csrc/moe/marlin_moe_wna16" && $PY generate_kernels.py 12.0) > "$WORK/results/gen-moe.log" 2>&1

TORCH=${TORCH_DIR:-$($PY -c 'import os, torch; print(os.path.dirname(torch.__file__))')}
PYINC=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NVCC=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
PTXAS=${CUDA_HOME:-/usr/local/cuda}/bin/ptxas
COMMON=(-forward-unknown-to-host-compiler -DPy_LIMITED_API=3 -DUSE_C10D_NCCL
  -isystem "$PYINC" -isystem "$TORCH/include" -isystem "$TORCH/include/torch/csrc/api/include"
  -isystem /usr/local/cuda/include -Xcudafe --diag_suppress=cc_clobber_ignored
  --expt-relaxed-constexpr --expt-extended-lambda -g -DNDEBUG -std=c++17 -Xcompiler=-fPIC -DENABLE_FP8)
FA=(-DFLASHATTENTION_DISABLE_BACKWARD -DFLASHATTENTION_DISABLE_DROPOUT -DFLASHATTENTION_DISABLE_PYBIND
  -DTORCH_EXTENSION_NAME=_vllm_fa2_C -I"$WORK/fa/csrc" -I"$WORK/fa/csrc/flash_attn"
  -I"$WORK/fa/csrc/flash_attn/src" -I"$WORK/fa/csrc/common" -I"$WORK/fa/csrc/cutlass/include"
  -O3 --use_fast_math -DCUTLASS_ENABLE_DIRECT_CUDA_DRIVER_CALL=1)
VL=(-DTORCH_EXTENSION_NAME=_C -I"$V/csrc" -I"$WORK/cutlass/include" -I"$WORK/cutlass/tools/util/include"
  -O2 -DCUTLASS_ENABLE_DIRECT_CUDA_DRIVER_CALL=1 -static-global-template-stub=false)
SM80PTX=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_80,code=compute_80)
SM120=(-gencode arch=compute_120,code=sm_120)

# /usr/bin/time -v where the machine has it; else the same three lines from getrusage (whose
# RUSAGE_CHILDREN counts nvcc's cicc and ptxas too, as wait4 does for time -v).
TIME=(/usr/bin/time -v -o)
if [ ! -x /usr/bin/time ]; then
  cat > "$WORK/timev.py" <<'PYEOF'
import resource, subprocess, sys, time
out, argv = sys.argv[1], sys.argv[2:]
start = time.monotonic()
rc = subprocess.call(argv)
wall = time.monotonic() - start
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(out, "w") as f:
    f.write(f"\tUser time (seconds): {ru.ru_utime:.2f}\n\tSystem time (seconds): {ru.ru_stime:.2f}\n")
    f.write(f"\tMaximum resident set size (kbytes): {ru.ru_maxrss}\n\tElapsed (wall clock) seconds: {wall:.2f}\n")
    f.write(f"\tExit status: {rc}\n")
sys.exit(rc)
PYEOF
  TIME=("$PY" "$WORK/timev.py")
fi
jobs_script=$WORK/jobs.sh
: > "$jobs_script"
compile() {  # NAME SOURCE FLAGS-ARRAY-NAME GENCODE-ARRAY-NAME [keep]
  local name=$1 src=$2 flags="$3[@]" gencode="$4[@]" keep=()
  [ "${5:-}" = keep ] && mkdir -p "$WORK/keep/$name" && keep=(--keep --keep-dir "$WORK/keep/$name")
  printf '{ ' >> "$jobs_script"
  printf '%q ' "${TIME[@]}" "$WORK/results/$name.time" "$NVCC" "${COMMON[@]}" "${!flags}" \
    "${!gencode}" "${keep[@]}" -x cu -c "$src" -o "$WORK/obj/$name.o" >> "$jobs_script"
  printf '> %q 2>&1; echo $? > %q; } &\n' "$WORK/results/$name.log" "$WORK/results/$name.rc" >> "$jobs_script"
}
for obj in ${FA2_OBJECTS:-flash_fwd_hdim128_bf16_sm80 flash_fwd_split_hdim128_bf16_causal_sm80 flash_fwd_sparse_hdim128_bf16_causal_sm80}; do
  compile "fa2-$obj-sm80ptx" "$WORK/fa/csrc/flash_attn/src/$obj.cu" FA SM80PTX keep
  compile "fa2-$obj-sm120" "$WORK/fa/csrc/flash_attn/src/$obj.cu" FA SM120
done
if [ "${FAMILIES:-1}" = 1 ]; then
compile hadamard-sm120 "$V/csrc/quantization/hadamard/hadacore/hadamard_transform_cuda.cu" VL SM120
compile gptq_marlin-sm120 "$V/csrc/quantization/gptq_marlin/gptq_marlin.cu" VL SM120
compile marlin_24-sm120 "$V/csrc/quantization/marlin/sparse/marlin_24_cuda_kernel.cu" VL SM120
marlin=$(ls "$V"/csrc/quantization/gptq_marlin/sm80_kernel_*_bfloat16.cu | head -1)
compile marlin_bf16-sm120 "$marlin" VL SM120
moe=$(ls "$V"/csrc/moe/marlin_moe_wna16/sm80_kernel_bfloat16_u4b8_bfloat16.cu 2>/dev/null || ls "$V"/csrc/moe/marlin_moe_wna16/sm80_kernel_*.cu | head -1)
compile marlin_moe-sm120 "$moe" VL SM120
echo "basename $marlin > $WORK/results/generated.txt; basename $moe >> $WORK/results/generated.txt" >> "$jobs_script"
fi
echo wait >> "$jobs_script"
# ptxas on the kept compute_80 PTX of each FA2 object: the driver JIT's work, for sm_120 and sm_80.
cat >> "$jobs_script" <<EOF
for ptx in $WORK/keep/*/*.ptx; do
  name=\$(basename "\$(dirname "\$ptx")")
  stat -c %s "\$ptx" > $WORK/results/\$name.ptx_bytes
  grep -c '^.entry\|^.visible .entry\|^.weak .entry' "\$ptx" > $WORK/results/\$name.ptx_entries || true
  for arch in sm_120 sm_80; do
    $(printf '%q ' "${TIME[@]}") $WORK/results/\$name.ptxas-\$arch.time $PTXAS -arch=\$arch -O3 "\$ptx" -o $WORK/obj/\$name.ptxas-\$arch.cubin &
  done
done
wait
nproc > $WORK/results/nproc; $NVCC --version | tail -2 > $WORK/results/nvcc-version; lscpu | grep 'Model name' > $WORK/results/cpu
touch $WORK/done
EOF
setsid nohup bash "$jobs_script" > "$WORK/jobs.out" 2>&1 < /dev/null &
echo "started (pid $!): $WORK/done appears when it ends"
