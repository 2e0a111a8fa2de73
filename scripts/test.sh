#!/usr/bin/env bash
# Runs every test of vessel: installs what is missing, builds the guest image, then the unit and
# end-to-end tests (real QEMU microVMs, virtiofsd, vhost-device-vsock). Run as root.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
scripts/setup.sh
scripts/build-guest.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The end-to-end CRI tests start the daemon binary.
cargo build --workspace --bins --quiet
cargo test --workspace -- --test-threads=2
