#!/usr/bin/env bash
# Installs the LLVM (with the NVPTX backend) that burn's `cuda` feature needs, without its own download.
#
# burn 0.22's cuda backend links cubecl-llvm, whose build script asks tracel-llvm-bundler for LLVM. The
# bundler downloads a tarball from GitHub unless `$XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4/` (default
# `~/.local/share/...`) already holds an install with a `.tracel-llvm-installed` file (tracel-llvm-bundler
# 23.1.0-4: `config::llvm_path()` and `Environment::sentinel_name()`). PyPI's mlc-llvm-static plus its
# extra-targets wheel unpack to a static LLVM 23.1 with NVPTX and an `llvm-config`; this script installs them
# with pip into a folder of their own, links that install to the bundler's path and writes the marker file.
#
# Idempotent: a second run checks and changes nothing. Downloads nothing but the two PyPI packages.
#   MMRL_LLVM_DIR  where the wheels go (default ~/.cache/mmrl/mlc-llvm-static-23.1.1.post0)
#   PYTHON         the Python whose pip installs them (default python3)
set -euo pipefail

version=23.1.1.post0
bundle=tracel-llvm-23.1.0-4
python=${PYTHON:-python3}
dest=${MMRL_LLVM_DIR:-$HOME/.cache/mmrl/mlc-llvm-static-$version}
# dirs::data_local_dir() on Linux: $XDG_DATA_HOME when it is an absolute path, else ~/.local/share.
data_home=$HOME/.local/share
[[ ${XDG_DATA_HOME:-} == /* ]] && data_home=$XDG_DATA_HOME
link=$data_home/tracel/$bundle
prefix=$dest/mlc_llvm_static/static

say() { echo "setup-cuda-llvm: $*"; }
die() { echo "setup-cuda-llvm: error: $*" >&2; exit 1; }

# The LLVM answers through llvm-config, and burn's cuda compiler needs its NVPTX backend.
has_nvptx() {
    local targets
    targets=$("$1/bin/llvm-config" --targets-built 2>/dev/null) || return 1
    [[ " $targets " == *" NVPTX "* ]]
}

installed_version() {
    local meta
    meta=$(ls -d "$dest"/"$1"-*.dist-info 2>/dev/null | head -n 1) || true
    [[ -n $meta ]] && sed -n 's/^Version: //p' "$meta/METADATA"
}

if [[ $(uname -s) != Linux || $(uname -m) != x86_64 ]]; then
    die "only Linux x86-64 is scripted (the wheels are manylinux x86-64); this is $(uname -sm)"
fi

# An install the bundler already accepts (its own download, or an earlier run of this script) is kept.
if [[ -e $link/.tracel-llvm-installed ]] && has_nvptx "$link"; then
    say "$link already holds an LLVM with NVPTX and the bundler's marker: nothing to do"
    exit 0
fi
if [[ -e $link && ! -L $link ]]; then
    die "$link exists but is no LLVM with NVPTX and marker (a broken bundler download?); move it away and rerun"
fi

# 1) The wheels, into their own folder (no venv needed: nothing imports them, llvm-config runs as a script).
if [[ $(installed_version mlc_llvm_static) == "$version" &&
    $(installed_version mlc_llvm_static_extra_targets) == "$version" ]]; then
    say "mlc-llvm-static $version already in $dest"
else
    command -v "$python" >/dev/null || die "$python not found (set PYTHON to a Python 3 with pip)"
    say "installing mlc-llvm-static==$version and mlc-llvm-static-extra-targets==$version from PyPI into $dest"
    mkdir -p "$dest"
    "$python" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile --upgrade \
        --target "$dest" "mlc-llvm-static==$version" "mlc-llvm-static-extra-targets==$version"
fi
[[ -x $prefix/bin/llvm-config ]] || die "no llvm-config at $prefix/bin after the install"
has_nvptx "$prefix" || die "the LLVM in $prefix was built without NVPTX: $("$prefix/bin/llvm-config" --targets-built)"
say "LLVM $("$prefix/bin/llvm-config" --version) in $prefix has NVPTX"

# 2) The bundler's path points at it, and its marker says the install is complete.
mkdir -p "$(dirname "$link")"
if [[ $(readlink "$link" 2>/dev/null) != "$prefix" ]]; then
    ln -sfn "$prefix" "$link"
    say "linked $link -> $prefix"
fi
touch "$link/.tracel-llvm-installed"
say "marked $link installed (.tracel-llvm-installed)"

# 3) Linking (not `cargo check`) needs the system libraries llvm-config names; say which are missing.
for lib in $("$prefix/bin/llvm-config" --link-static --system-libs); do
    name=${lib#-l}
    if [[ $(gcc -print-file-name="lib$name.so") == "lib$name.so" && $(gcc -print-file-name="lib$name.a") == "lib$name.a" ]]; then
        say "warning: lib$name is not installed: linking a cuda build fails (Debian: apt-get install lib$name-dev)"
    fi
done
say "done: cargo build --features cuda finds this LLVM offline"
