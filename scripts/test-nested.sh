#!/usr/bin/env bash
# Runs the end-to-end families where the backend matters (pods, containers, crash/restart,
# the full boot) a second time, inside the nested-KVM test host (scripts/nested-kvm.sh), where
# `hypervisor.kind = "auto"` picks the built-in VMM. VESSEL_TEST_BACKEND=builtin makes every
# test fail rather than fall back to QEMU, and a SKIPPED line fails the run: this run exists to
# test vessel-vmm. Expects the workspace built (scripts/test.sh builds it first). Run as root.
#
# usage: scripts/test-nested.sh [TEST_FILE...]   (default: the families below)
#        scripts/test-nested.sh --list             (prints the default families)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

# The test files (tests/tests/<name>.rs) whose tests depend on the backend.
default_families=(builtin_vm pod_vm cri_runtime cri_containers cri_conformance cri_volumes
                  cri_security cri_resilience cri_image_run cri_network
                  cri_resources cri_streaming native_pods)
if [ "${1:-}" = --list ]; then
    printf '%s\n' "${default_families[@]}"
    exit 0
fi
families=("$@")
if [ ${#families[@]} -eq 0 ]; then
    families=("${default_families[@]}")
fi

# The test binaries cargo built for those files (the newest build of each).
mapfile -t executables < <(cargo test -p vessel-tests --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//')
binaries=()
for family in "${families[@]}"; do
    found=""
    for exe in "${executables[@]}"; do
        case "$(basename "$exe")" in "$family"-*) found=$exe ;; esac
    done
    [ -n "$found" ] || { echo "test-nested: no test binary for $family" >&2; exit 1; }
    binaries+=("$found")
done

log=$(mktemp /tmp/vessel-nested.XXXXXX.log)
attempt_log=$(mktemp /tmp/vessel-nested-attempt.XXXXXX.log)
trap 'rm -f "$log" "$attempt_log"' EXIT
echo "test-nested: ${families[*]} on vessel-vmm, each file in its own nested-KVM host" >&2
# A frozen L1 (nested-kvm.sh exits 75: a flaw of TCG's emulated SVM, not of the code under
# test) costs only the tests it had not finished: they run again in a fresh L1, this many times.
max_attempts=3
start=$SECONDS
failed=()
for bin in "${binaries[@]}"; do
    name=$(basename "$bin")
    skips=()
    for attempt in $(seq 1 "$max_attempts"); do
        echo "==== ${name%-*} (nested-KVM host, attempt $attempt)"
        set +e
        # One test at a time: the L1 has one vCPU (see nested-kvm.sh).
        VESSEL_TEST_BACKEND=builtin scripts/nested-kvm.sh "$bin" --test-threads=1 --color never \
            "${skips[@]}" 2>&1 | tee "$attempt_log"
        rc=${PIPESTATUS[0]}
        set -e
        cat "$attempt_log" >> "$log"
        [ "$rc" -eq 77 ] && exit 0 # nested-kvm.sh printed why no nested host can run here
        # Only a frozen L1 (not a failed test) earns another try.
        [ "$rc" -eq 75 ] && [ "$attempt" -lt "$max_attempts" ] || break
        # The tests that passed before the freeze are not run again (a kernel message may
        # split a result line: "test NAME ... [ 60.0] kvm: ..." then "ok").
        [ ${#skips[@]} -gt 0 ] || skips=(--exact)
        while read -r passed; do
            skips+=(--skip "$passed")
        done < <(awk '/^test [^ ]+ \.\.\. / { name = $2; rest = substr($0, index($0, " ... ") + 5)
                                                if (rest ~ /^ok/) print name; else pending = name; next }
                      pending != "" && /^ok$/ { print pending }
                      { pending = "" }' "$attempt_log")
        echo "test-nested: the nested host froze during ${name%-*}; running its unfinished tests again" >&2
    done
    [ "$rc" -eq 0 ] || failed+=("${name%-*}")
done
echo "test-nested: $((SECONDS - start)) s" >&2
# (A test's SKIPPED line may follow the harness's "test NAME ... " on the same line.)
if grep -aE '(^| )SKIPPED [A-Za-z0-9_]+: ' "$log" >&2; then
    echo "test-nested: a test skipped in the nested run (above), which exists to run them all" >&2
    exit 1
fi
if [ ${#failed[@]} -gt 0 ]; then
    echo "test-nested: FAILED on vessel-vmm: ${failed[*]}" >&2
    exit 1
fi
