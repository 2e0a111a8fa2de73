#!/usr/bin/env bash
# Runs every test of vessel: installs what is missing, builds the guest image, then the unit and
# end-to-end tests (real microVMs, virtiofsd, vhost-device-vsock, a registry), and the
# end-to-end families where the backend matters once more on the other backend, so both
# vessel-vmm and QEMU run them on every machine, and the CRI families once more on the native
# handler. Run as root.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
# A run from a clean tree gains nothing from incremental artefacts (GiBs on disk).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# The build tree, guest images and test binaries take about 8 GiB; say so up front rather than
# fail half-way with "No space left on device".
free_kib=$(df -Pk "$repo" | awk 'NR == 2 { print $4 }')
echo "test: $((free_kib / 1024 / 1024)) GiB free on the disk of $repo" >&2
if [ "$free_kib" -lt $((8 * 1024 * 1024)) ]; then
    echo "test: warning: under 8 GiB free; the build may run out of space" >&2
fi
scripts/setup.sh
scripts/build-guest.sh
# The guest image of an older agent, for the upgrade test (a pod VM adopted across an upgrade).
scripts/build-guest-baseline.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The end-to-end CRI tests start the daemon binary.
cargo build --workspace --bins --quiet
# `auto` picks vessel-vmm where this machine's KVM runs full guests, else QEMU (TCG); the
# tests fail if the daemon picked otherwise. The backend families then run again on the other.
full_kvm=false
if [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    full_kvm=true
fi
backend=$($full_kvm && echo builtin || echo qemu)
VESSEL_TEST_BACKEND=$backend cargo test --workspace -- --test-threads=2
# The CRI families again with their pods on the native handler (`runc`: host containers);
# their VM pods, where a test has some beside, stay on the backend above.
native_families=(cri_containers cri_conformance cri_volumes cri_security cri_image_run
                 cri_network cri_streaming)
echo "test: ${native_families[*]} again on the native handler (runc)" >&2
VESSEL_TEST_HANDLER=runc VESSEL_TEST_BACKEND=$backend \
    cargo test -p vessel-tests $(printf -- '--test %s ' "${native_families[@]}") -- --test-threads=2
if $full_kvm; then
    mapfile -t families < <(scripts/test-nested.sh --list | grep -vx builtin_vm)
    echo "test: ${families[*]} again on QEMU (-accel kvm)" >&2
    VESSEL_TEST_HYPERVISOR=qemu VESSEL_TEST_BACKEND=qemu \
        cargo test -p vessel-tests $(printf -- '--test %s ' "${families[@]}") -- --test-threads=2
else
    scripts/test-nested.sh
fi
