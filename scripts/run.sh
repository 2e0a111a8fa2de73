#!/usr/bin/env bash
# Runs the vessel-shim daemon on its embedded defaults (CRI on unix:///run/vessel/vessel.sock),
# after installing what is missing and building the guest image. Extra arguments go to the
# daemon (e.g. --config FILE). Run as root.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
scripts/setup.sh
scripts/build-guest.sh
# The daemon, and vessel-vmm beside it: `hypervisor.kind = "auto"` picks it wherever KVM runs
# full guests, and finds it next to the daemon's binary.
cargo build --release --quiet -p vessel-shim -p vessel-vmm
exec target/release/vessel-shim "$@"
