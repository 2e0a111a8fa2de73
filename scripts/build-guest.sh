#!/usr/bin/env bash
# Builds the statically linked agent and the guest image (kernel + initramfs) into build/guest.
# Both steps are incremental: with nothing changed this is a no-op.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
target=x86_64-unknown-linux-gnu
# crt-static only for the target build (build scripts and proc-macros stay dynamic), with
# libseccomp (libcontainer's seccomp filters) linked in from its static archive.
LIBSECCOMP_LINK_TYPE=static \
LIBSECCOMP_LIB_PATH=$(pkg-config --variable=libdir libseccomp) \
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --quiet -p vessel-agent --target "$target"
guest-image/build.sh --agent "target/$target/release/vessel-agent"
