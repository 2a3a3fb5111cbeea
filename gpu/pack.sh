#!/usr/bin/env bash
# Builds the GPU binaries here and packs them for gpu/run.sh on a machine without a Rust toolchain:
# `mmrl-model` (the bench) and the `gpu` parity test binary, release profile, stripped, xz-compressed into
# .gpu/bins.tar.xz (which .git/info/exclude should ignore; the device tool carries it with `carry: [".gpu"]`).
#
#     bash scripts/setup-cuda-llvm.sh     # once: the offline LLVM that the cuda feature needs
#     bash gpu/pack.sh                    # FEATURES=cuda,vulkan by default
#
# Builds go to their own target dir (the GPU features recompile burn; the default one stays untouched).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mmrl/target-gpu}
export CARGO_INCREMENTAL=0
features=${FEATURES:-cuda,vulkan}
build=(nice -n 19 cargo build --release --locked -p mmrl-model --features "$features")

"${build[@]}" --bin mmrl-model
test_bin=$(
    "${build[@]}" --test gpu --message-format=json |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable"):
        print(m["executable"])'
)
[[ -x $test_bin ]] || { echo "pack: no gpu test binary built" >&2; exit 1; }

mkdir -p .gpu /tmp/mmrl-pack
strip -o /tmp/mmrl-pack/mmrl-model "$CARGO_TARGET_DIR/release/mmrl-model"
strip -o /tmp/mmrl-pack/gpu-test "$test_bin"
# One xz stream with a dictionary larger than a binary: the second compresses against the first (they share
# burn and LLVM), 40 MB instead of 66 MB as two files, which keeps the carried tree under 64 MiB.
tar -C /tmp/mmrl-pack -cf - mmrl-model gpu-test | xz -T1 --lzma2=preset=6,dict=192MiB >.gpu/bins.tar.xz
rm -rf /tmp/mmrl-pack
du -h .gpu/bins.tar.xz
