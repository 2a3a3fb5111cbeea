#!/usr/bin/env bash
# The GPU check in one call: parity tests and the bench beside PyTorch, on a machine with no Rust toolchain.
#
# Run from the repository root on the GPU machine, with the binaries that gpu/pack.sh made here carried in
# .gpu/ (and, for vulkan, the loader packages in .gl/):
#     bash gpu/run.sh            # everything
#     GPU_STEPS="nvidia parity-cuda bench-cuda torch" bash gpu/run.sh
# Every step has its own timeout; a failed step is reported and the next one runs. Output goes to the
# terminal and to $OUT/log.txt (or /tmp/mmrl-gpu/log.txt), the figures to summary.md beside it.
#
# Local dry run (CPU backend, no GPU, no torch needed): GPU_DEVICE=cpu GPU_BIN=target/release bash gpu/run.sh
set -uo pipefail

out=${OUT:-/tmp/mmrl-gpu}
mkdir -p "$out"
log=$out/log.txt
: >"$log"
bin=${GPU_BIN:-/tmp/mmrl-gpu-bin}
device=${GPU_DEVICE:-cuda}
steps=${GPU_STEPS:-nvidia parity-cuda bench-cuda torch parity-vulkan bench-vulkan}
results=$out/results.jsonl
: >"$results"

say() { echo "== $* ($(date -u +%H:%M:%S))" | tee -a "$log"; }
wants() { [[ " $steps " == *" $1 "* ]]; }

# step NAME SECONDS COMMAND...: runs COMMAND with a timeout, output tee'd to the log.
step() {
    local name=$1 limit=$2
    shift 2
    say "$name (limit ${limit}s)"
    local t0=$SECONDS
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "-- $name: rc=$rc in $((SECONDS - t0))s" | tee -a "$log"
    return "$rc"
}

unpack() {
    [[ -n ${GPU_BIN:-} ]] && return 0
    mkdir -p "$bin"
    [[ -x $bin/mmrl-model && -x $bin/gpu-test ]] && return 0
    # One tar in one xz stream with a dictionary larger than a binary: the two share burn and LLVM.
    xz -dc .gpu/bins.tar.xz | tar -C "$bin" -xf -
}

# The Vulkan loader is not on the image: unpack the carried Debian packages (README of the device tool).
vulkan_loader() {
    ldconfig -p | grep -q libvulkan.so.1 && return 0
    compgen -G ".gl/*.deb" >/dev/null || { echo "no .gl/*.deb carried: no Vulkan loader" | tee -a "$log"; return 1; }
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
    [[ -f $VK_DRIVER_FILES ]] || unset VK_DRIVER_FILES
}

# bench DEVICE PRESET BATCH [extra args]: one `mmrl-model bench`, its JSON line kept with its labels.
bench() {
    local dev=$1 preset=$2 batch=$3
    shift 3
    local tmp
    tmp=$(mktemp)
    step "bench $dev $preset batch $batch $*" 240 \
        "$bin/mmrl-model" bench --device "$dev" --preset "$preset" --batch "$batch" --threads 1 "$@" |
        tee "$tmp" >/dev/null
    local json
    json=$(grep -m1 '^{' "$tmp")
    [[ -n $json ]] && echo "{\"impl\":\"mmrl-$dev\",\"preset\":\"$preset\",\"batch\":$batch,\"args\":\"$*\",\"r\":$json}" >>"$results"
    rm -f "$tmp"
}

# torch PRESET BATCH d enc dec heads: the PyTorch twin on the same shapes.
torch_ref() {
    local preset=$1 batch=$2
    shift 2
    local tmp
    tmp=$(mktemp)
    step "torch $device $preset batch $batch" 180 \
        env TORCH_DEVICE="$device" PYTHONUNBUFFERED=1 python3 crates/mmrl-model/bench/torch_ref.py "$@" "$batch" 20 | tee "$tmp" >/dev/null
    local json
    json=$(grep -m1 '^{' "$tmp")
    [[ -n $json ]] && echo "{\"impl\":\"torch\",\"preset\":\"$preset\",\"batch\":$batch,\"args\":\"\",\"r\":$json}" >>"$results"
    rm -f "$tmp"
}

unpack
# cudarc loads libcuda (driver) and, where cubecl asks for it, NVRTC at run time: let it find the toolkit's.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [[ -d $d ]] && export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
done
if wants nvidia; then
    step nvidia-smi 30 nvidia-smi
fi
if wants parity-cuda; then
    step "parity cuda" 300 env MMRL_GPU_TESTS=require RUST_BACKTRACE=1 \
        "$bin/gpu-test" --test-threads=1 --nocapture cuda
fi
if wants bench-cuda; then
    bench "$device" tiny 32
    bench "$device" tiny 256
    bench "$device" base 128
    bench "$device" base 128 --dropout 0
fi
if wants torch; then
    torch_ref tiny 32 64 2 1 4
    torch_ref tiny 256 64 2 1 4
    torch_ref base 128 256 6 2 8
fi
if wants parity-vulkan && vulkan_loader; then
    step "parity vulkan" 240 env MMRL_GPU_TESTS=require RUST_BACKTRACE=1 \
        "$bin/gpu-test" --test-threads=1 --nocapture vulkan
fi
if wants bench-vulkan && vulkan_loader; then
    bench vulkan base 128
fi

say summary
python3 gpu/summary.py "$results" | tee "$out/summary.md" | tee -a "$log"
