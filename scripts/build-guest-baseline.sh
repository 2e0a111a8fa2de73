#!/usr/bin/env bash
# Builds the guest image of the baseline agent (guest-image/BASELINE) into build/guest-baseline:
# the same kernel as build/guest, an initramfs whose agent is built from that commit's source.
# The upgrade test boots a pod VM from it, then restarts the daemon on the current image, as a
# node upgrade does. Needs the commit in this clone's history and build/guest built first
# (scripts/build-guest.sh), whose kernel download it reuses. Incremental: a no-op when built.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
# The clone may belong to another user than the root that runs the tests.
git() { command git -c safe.directory="$repo" "$@"; }
commit=$(grep -v '^#' guest-image/BASELINE | head -n1)
out=$repo/build/guest-baseline
if [ -s "$out/initramfs.img" ] && [ "$(cat "$out/agent.commit" 2>/dev/null)" = "$commit" ]; then
    exit 0
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
    echo "build-guest-baseline: commit $commit (guest-image/BASELINE) is not in this clone's" \
         "history; clone with full history (not --depth) to build the baseline guest image" >&2
    exit 1
fi
[ -d build/guest/cache ] || { echo "build-guest-baseline: run scripts/build-guest.sh first" >&2; exit 1; }
# The source stays beside its target dir: cargo keys path packages by their place in the
# workspace, so a fresh copy elsewhere would look built while missing its generated code.
src=$repo/target/guest-baseline/src-$commit
if [ ! -d "$src" ]; then
    rm -rf "$src.tmp"
    mkdir -p "$src.tmp"
    git archive "$commit" | tar -x -m -C "$src.tmp" # -m: mtimes now, so cargo reruns build scripts
    mv "$src.tmp" "$src"
fi
echo "build-guest-baseline: building the agent of ${commit:0:12}" >&2
target=x86_64-unknown-linux-gnu
# The same flags as scripts/build-guest.sh, in a target dir of its own: the baseline binary
# must never take the place of the current one.
LIBSECCOMP_LINK_TYPE=static \
LIBSECCOMP_LIB_PATH=$(pkg-config --variable=libdir libseccomp) \
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --quiet -p vessel-agent --target "$target" \
    --manifest-path "$src/Cargo.toml" --target-dir "$repo/target/guest-baseline"
mkdir -p "$out"
# The kernel package, already downloaded for build/guest (hard links: no copy).
[ -d "$out/cache" ] || cp -al build/guest/cache "$out/cache"
cp "target/guest-baseline/$target/release/vessel-agent" "$out/vessel-agent"
guest-image/build.sh --agent "$out/vessel-agent" --out "$out" >/dev/null
echo "$commit" > "$out/agent.commit"
echo "build-guest-baseline: $out/initramfs.img (agent of ${commit:0:12})" >&2
