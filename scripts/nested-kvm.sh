#!/usr/bin/env bash
# Runs a command as root inside a nested-KVM test host and exits with its status.
#
# The host is a QEMU TCG guest ("L1") with an emulated AMD SVM CPU and nested paging, running
# Debian's generic kernel with kvm_amd loaded, so /dev/kvm in it boots full Linux guests even on
# a machine whose own KVM cannot. It sees this machine's / read-only (9p) under a tmpfs overlay,
# with fresh /proc, /sys, /dev, /tmp and /run, cgroups mounted as this machine has them, lo up,
# and the modules later features need (tun, veth, bridge, tc mirred/u32/ingress, nf_tables and
# iptables nat). The command runs in the current directory with this environment's PATH, HOME,
# RUST_* and VESSEL_* variables; its output (stdout and stderr together) comes out on stdout.
#
# usage: scripts/nested-kvm.sh [--mem MIB] [--cpus N] [--timeout SECS] [--] CMD [ARG...]
#
# Exit status: the command's; 124 when it ran past --timeout; 75 when the L1 froze (its
# heartbeat stopped and a kick did not restart it: a flaw of TCG's emulated SVM that strikes
# now and then, so a caller may retry); 125 when the host failed before the command reported a status; 77 (with a SKIPPED
# line) when no nested host can be had here.
# The L1 kernel and initramfs are cached in build/nested/ (rebuilt when this script, the kernel
# package or the module list change). Run as root.
set -euo pipefail
umask 022
export LC_ALL=C

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
REPO_DIR=$(dirname "$(dirname "$SCRIPT_PATH")")
LIB=$REPO_DIR/scripts/lib/debian-kernel.sh
OUT=$REPO_DIR/build/nested
CACHE=$OUT/cache
KROOT=$CACHE/kernel-root
KERNEL_META=linux-image-amd64

# The L1's modules, loaded in this order (dependencies first, resolved from modules.dep):
# virtio-pci and 9p for the shared root, overlay and fuse (virtiofsd), KVM on AMD SVM, and what
# pod networking needs (taps, veths, the CNI bridge, tc redirects, NAT for host ports, the
# bandwidth plugin's ifb and tbf).
# crc32c_generic is libcrc32c's soft dependency (nf_tables needs it); modules.dep lacks those.
MODULES=(
    virtio_pci 9pnet_virtio 9p overlay fuse
    kvm_amd
    tun veth bridge sch_ingress cls_u32 act_mirred ifb sch_tbf
    crc32c_generic nf_tables nft_chain_nat nft_compat nft_masq nft_ct
    ip_tables iptable_filter iptable_nat iptable_mangle ip6_tables ip6table_filter ip6table_nat
    xt_MASQUERADE xt_conntrack xt_comment xt_mark xt_addrtype xt_multiport xt_nat
)

MEM=6144
# The L1's timer ticks periodically (highres=off nohz=off): CI caught the L1 idle in HLT with
# interrupts on and no heartbeat for minutes, its one-shot timer interrupt lost somewhere in
# TCG's SVM emulation; a periodic LAPIC timer re-raises the pending interrupt at the next tick.
# One vCPU: with two, TCG's emulated SVM loses track of guest state when L2 guests run on both
# at once (measured here: L2 guests of either VMM reset or hang in their boot, and the L1
# kernel itself crashed in KVM's entry code; 40 of 40 paired boots passed with one vCPU).
# `-cpu max` crashes the L1 the same way; single-threaded TCG stalls every L2 boot.
CPUS=1
TIMEOUT=3600

log() { printf 'nested-kvm: %s\n' "$*" >&2; }
die() { printf 'nested-kvm: error: %s\n' "$*" >&2; exit 125; }
skip() { printf 'SKIPPED nested-kvm: %s\n' "$*" >&2; exit 77; }

usage() {
    sed -n '2,/^set -euo/p' "$SCRIPT_PATH" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --mem) MEM=${2:?--mem needs MiB}; shift 2 ;;
        --cpus) CPUS=${2:?--cpus needs a count}; shift 2 ;;
        --timeout) TIMEOUT=${2:?--timeout needs seconds}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        -*) usage; die "unknown option: $1" ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || { usage; die "no command given"; }
[ "$(id -u)" -eq 0 ] || die "must run as root (the L1 serves this machine's / and mounts in it)"

"$REPO_DIR/scripts/setup.sh"
command -v qemu-system-x86_64 >/dev/null 2>&1 || skip "qemu-system-x86_64 not found"
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] && file -b "$BUSYBOX" | grep -q 'statically linked' \
    || skip "$BUSYBOX is not a static busybox (apt-get install busybox-static)"

mkdir -p "$CACHE" "$OUT/runs"
# shellcheck source=lib/debian-kernel.sh
. "$LIB"
trap remove_tmp_paths EXIT

# ---------------------------------------------------------------------------------------------
# The L1 kernel and initramfs (one builder at a time; runs share the result).
build_l1() {
    exec 9>>"$OUT/.lock"
    flock -w 900 9 || die "timed out waiting for the lock on $OUT/.lock"
    rm -rf -- "$OUT"/.staging.* "$CACHE"/.download.* "$CACHE"/.kernel-root.*
    kernel_resolve "$KERNEL_META" amd64 "$CACHE"
    local stamp
    stamp=$( { cat "$SCRIPT_PATH" "$LIB"; printf '%s\n' "$DEB" "${MODULES[*]}"; } | sha256sum | cut -d' ' -f1)
    if [ -f "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$stamp" ] \
        && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initramfs.img" ]; then
        exec 9>&-
        return 0
    fi
    kernel_fetch "$CACHE"
    kernel_unpack "$CACHE" "$KROOT"
    modules_order "$MODDIR" "${MODULES[@]}"
    log "L1 modules: ${ORDER[*]}"
    local stage root
    stage=$(mktemp -d "$OUT/.staging.XXXXXX")
    TMP_PATHS+=("$stage")
    root=$stage/root
    mkdir -p "$root"/{bin,dev,proc,sys,mnt/host,mnt/rw,mnt/root,xchg,lib/modules}
    install -m 0755 "$BUSYBOX" "$root/bin/busybox"
    ln -s busybox "$root/bin/sh"
    modules_install "$MODDIR" "$root/lib/modules" "$root/modules.load"
    l1_init > "$root/init"
    chmod 0755 "$root/init"
    cpio_pack "$root" "$stage/initramfs.img"
    cp "$VMLINUZ" "$stage/vmlinuz"
    mv -f "$stage/initramfs.img" "$stage/vmlinuz" "$OUT/"
    printf '%s\n' "$stamp" > "$OUT/.stamp"
    log "built the L1 kernel and initramfs in $OUT ($KVER, ${#ORDER[@]} modules)"
    exec 9>&-
}

# The L1's /init: modules, the host's root under a tmpfs overlay, then the command in it.
l1_init() {
    cat <<'EOF'
#!/bin/sh
export PATH=/bin
busybox mount -t proc proc /proc
busybox mount -t sysfs sysfs /sys
busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
busybox stty -onlcr 2>/dev/null
fail() { echo "nested-kvm L1: $*"; busybox sync; busybox poweroff -f; }
while read -r m; do
    busybox insmod "/lib/modules/$m" || fail "insmod $m failed"
done < /modules.load
[ -e /dev/kvm ] || fail "no /dev/kvm after loading kvm_amd"
busybox mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 xchg /xchg || fail "mount the exchange dir"
busybox mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro host /mnt/host \
    || fail "mount the host's root"
busybox mount -t tmpfs -o mode=0755 rw /mnt/rw
busybox mkdir -p /mnt/rw/upper /mnt/rw/work
busybox mount -t overlay -o lowerdir=/mnt/host,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work,index=off,xino=off,redirect_dir=off,metacopy=off overlay /mnt/root \
    || fail "overlay on the host's root"
R=/mnt/root
X=$(busybox cat /xchg/path)
busybox mount -t proc proc $R/proc
busybox mount -t sysfs sysfs $R/sys
busybox mount --rbind /dev $R/dev
busybox mkdir -p $R/dev/pts $R/dev/shm
busybox mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
busybox mount -t tmpfs -o mode=1777 shm $R/dev/shm
# /tmp and /run start empty, but a checkout below them (listed in /xchg/keep) stays in view.
i=0
while read -r path; do
    busybox mkdir -p /mnt/keep/$i
    busybox mount --bind "$R$path" /mnt/keep/$i || fail "keep $path in view"
    i=$((i + 1))
done < /xchg/keep
busybox mount -t tmpfs -o mode=1777 tmp $R/tmp
busybox mount -t tmpfs -o mode=0755 run $R/run
i=0
while read -r path; do
    busybox mkdir -p "$R$path"
    busybox mount --move /mnt/keep/$i "$R$path" || fail "keep $path in view"
    i=$((i + 1))
done < /xchg/keep
# cgroups as the host has them: "fstype source options mountpoint" lines.
while read -r fstype source options mountpoint; do
    busybox mkdir -p "$R$mountpoint"
    busybox mount -t "$fstype" -o "$options" "$source" "$R$mountpoint" || fail "mount $fstype at $mountpoint"
done < /xchg/mounts
busybox mount --move /xchg "$R$X" || fail "move the exchange dir to $X"
busybox ip link set lo up
busybox hostname nested-kvm
# The heartbeat the host watches: it stops when the L1 freezes.
(while :; do busybox date +%s > "$R$X/heartbeat"; busybox sleep 10; done) &
busybox chroot $R /bin/bash "$X/run.sh"
echo $? > "$R$X/rc"
busybox sync
busybox umount "$R$X"
busybox poweroff -f
EOF
}

build_l1

# ---------------------------------------------------------------------------------------------
# One run: an exchange dir holding the command, the cgroup mounts and, at the end, its status.
XCHG=$(mktemp -d "$OUT/runs/run.XXXXXX")
TMP_PATHS+=("$XCHG")
printf '%s\n' "$XCHG" > "$XCHG/path"
# A v1 hierarchy with a name and no controller (systemd's) needs "none" on older kernels.
awk '$5 ~ /^\/sys\/fs\/cgroup/ {
       for (i = 7; $i != "-"; i++);
       fstype = $(i + 1); source = $(i + 2); options = $(i + 3)
       if (fstype == "cgroup") {
           n = split(options, opt, ","); controllers = 0
           for (j = 1; j <= n; j++)
               if (opt[j] !~ /^(rw|ro|xattr|clone_children|noprefix|name=.*|release_agent=.*)$/) controllers++
           if (!controllers) options = options ",none"
       }
       print fstype, source, options, $5 }' /proc/self/mountinfo > "$XCHG/mounts"
# The checkout and the working directory, where they lie below /tmp or /run (which the L1
# mounts afresh).
keep=("$REPO_DIR")
case "$PWD/" in "$REPO_DIR"/*) ;; *) keep+=("$PWD") ;; esac
for path in "${keep[@]}"; do
    case "$path/" in /tmp/*|/run/*) printf '%s\n' "$path" ;; esac
done > "$XCHG/keep"
{
    echo '#!/bin/bash'
    printf 'cd -- %q || exit 125\n' "$PWD"
    while IFS='=' read -r name _; do
        case "$name" in
            PATH|HOME|USER|TERM|RUST_*|VESSEL_*|CARGO_*|RUSTUP_*) printf 'export %s=%q\n' "$name" "${!name}" ;;
        esac
    done < <(env)
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
} > "$XCHG/run.sh"

# The L1's monitor, over a pair of FIFOs: on a freeze it tells where the vCPU is stuck.
MON=$XCHG.monitor
TMP_PATHS+=("$MON.in" "$MON.out")
mkfifo "$MON.in" "$MON.out"

log "starting the L1 (QEMU TCG, AMD SVM + NPT, ${MEM} MiB, $CPUS vCPUs); the command: $*"
set +e
timeout -k 10 "$TIMEOUT" qemu-system-x86_64 \
    -accel tcg,thread=multi -M q35 -cpu qemu64,+svm,+npt -smp "$CPUS" -m "$MEM" \
    -nodefaults -no-user-config -display none -no-reboot -nic none \
    -chardev stdio,id=con,signal=off -serial chardev:con \
    -chardev "pipe,id=mon,path=$MON" -mon chardev=mon,mode=readline \
    -virtfs "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$XCHG,mount_tag=xchg,security_model=none" \
    -kernel "$OUT/vmlinuz" -initrd "$OUT/initramfs.img" \
    -append "console=ttyS0 quiet loglevel=${NESTED_LOGLEVEL:-3} highres=off nohz=off panic=-1 rdinit=/init" </dev/null &
qemu=$!

# Asks the frozen L1's monitor where its vCPU is, three times a second apart, and logs each
# instruction pointer with its flags and halt state (HLT=1 with IF set in RFL: the L1 sleeps
# waiting for an interrupt that never comes). The full register dumps are kept beside the
# exchange dir (Debian's System.map is a placeholder, so no symbols).
freeze_report() {
    { for _ in 1 2 3; do echo 'info registers'; sleep 1; done; } > "$MON.in" || return 0
    timeout 3 cat "$MON.out" > "$XCHG.freeze" 2>/dev/null || true
    local line
    while IFS= read -r line; do
        log "stalled vCPU: $line"
    done < <(grep -a -o 'RIP=[0-9a-f]* RFL=[0-9a-f]* .* HLT=[01]' "$XCHG.freeze" || true)
    log "register dumps: $XCHG.freeze"
}
# A heartbeat older than this means the L1 stalled: it is then kicked (an NMI and a key
# press, either of which wakes a vCPU idling in HLT and makes QEMU look at pending interrupts
# again); still no heartbeat KICK_WAIT seconds later means it froze.
STALLED_AFTER=60
KICK_WAIT=30
frozen=false
kicked=0
started=$SECONDS
while kill -0 "$qemu" 2>/dev/null; do
    sleep 5
    now=$(date +%s)
    beat=$(stat -c %Y "$XCHG/heartbeat" 2>/dev/null || echo 0)
    if [ "$kicked" -ne 0 ] && [ "$beat" -gt "$kicked" ]; then
        log "the L1 beats again after the kick"
        kicked=0
        continue
    fi
    if [ "$beat" -eq 0 ]; then
        # No beat yet: the L1 gets as long to boot.
        [ $((SECONDS - started)) -gt "$STALLED_AFTER" ] || continue
    elif [ $((now - beat)) -le "$STALLED_AFTER" ]; then
        continue
    fi
    [ -s "$XCHG/rc" ] && continue # done, powering off
    if [ "$kicked" -eq 0 ]; then
        freeze_report
        log "no heartbeat for ${STALLED_AFTER} s; kicking the L1"
        printf 'nmi\nsendkey shift\n' > "$MON.in" || true
        kicked=$now
        continue
    fi
    [ $((now - kicked)) -ge "$KICK_WAIT" ] || continue
    frozen=true
    pkill -KILL -P "$qemu" 2>/dev/null
    kill -KILL "$qemu" 2>/dev/null
    break
done
wait "$qemu" 2>/dev/null
qemu_rc=$?
set -e
if $frozen; then
    log "the L1 froze (no heartbeat for $((STALLED_AFTER + KICK_WAIT)) s, a kick did not wake it); its command did not finish"
    exit 75
fi
if [ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ]; then
    log "the command ran past ${TIMEOUT} s"
    exit 124
fi
[ -s "$XCHG/rc" ] || die "the L1 ended (QEMU status $qemu_rc) before the command reported a status"
exit "$(cat "$XCHG/rc")"
