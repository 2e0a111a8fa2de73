#!/usr/bin/env bash
# Runs the vessel-shim daemon on its embedded defaults (CRI on unix:///run/vessel/vessel.sock),
# after installing what is missing and building the guest image. Extra arguments go to the
# daemon (e.g. --config FILE). Run as root.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
scripts/setup.sh
scripts/build-guest.sh
cargo build --release --quiet -p vessel-shim
exec target/release/vessel-shim "$@"
