#!/usr/bin/env bash
# Build the vessel guest image: an ELF vmlinux (PVH-bootable) extracted from Debian's cloud
# kernel package, and an uncompressed newc initramfs holding the agent as /init plus the kernel
# modules the agent loads. See guest-image/README.md.
#
# Usage: guest-image/build.sh --agent PATH_TO_STATIC_AGENT_BINARY [--out DIR]
#
# Progress goes to stderr; on success stdout carries exactly one line:
#   guest image: <out>/vmlinux <out>/initramfs.img
set -euo pipefail
umask 022
export LC_ALL=C

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
SCRIPT_DIR=$(dirname "$SCRIPT_PATH")
REPO_DIR=$(dirname "$SCRIPT_DIR")
LIB=$REPO_DIR/scripts/lib/debian-kernel.sh

KERNEL_META=linux-image-cloud-amd64

# Modules the agent loads. Dependencies (from modules.dep) are put first automatically, so the
# written load order can differ from this list (virtio itself depends on virtio_ring).
# pvpanic_mmio (despite its name, also the port-I/O driver) reports a kernel panic to the VMM.
MODULES=(
    virtio virtio_ring virtio_mmio
    vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport
    fuse virtiofs
    overlay
    failover net_failover virtio_net
    virtio_blk
    pvpanic_mmio
)

# Modules loaded only when the kernel asks for one (request_module runs /sbin/modprobe, which is
# the agent): what privileged workloads (CNI agents, istio-init, kube-proxy, docker-in-pod) set
# up. Packed zstd-compressed with an index of their dependencies and aliases; they cost guest
# memory only as files until loaded. crc32c_generic is libcrc32c's soft dependency.
ON_DEMAND=(
    bridge br_netfilter veth tun dummy macvlan ipvlan vxlan 8021q ipip
    nf_tables nft_chain_nat nft_compat nft_masq nft_ct nft_nat nft_redir nft_reject_inet
    nft_fib_inet nft_limit
    ip_tables iptable_nat iptable_filter iptable_mangle iptable_raw
    ip6_tables ip6table_nat ip6table_filter ip6table_mangle ip6table_raw ipt_REJECT ip6t_REJECT
    xt_MASQUERADE xt_conntrack xt_comment xt_mark xt_addrtype xt_multiport xt_nat xt_REDIRECT
    xt_tcpudp xt_statistic xt_set xt_limit xt_physdev xt_state xt_owner xt_CT xt_LOG xt_recent
    ip_set ip_set_hash_ip ip_set_hash_net ip_vs ip_vs_rr
    sch_htb sch_ingress sch_prio sch_tbf sch_netem sch_sfq cls_u32 cls_fw cls_bpf
    act_mirred act_gact
    crc32c_generic
)

# Everything but the final result line goes to stderr; fd 3 is the real stdout.
exec 3>&1 1>&2

log() { printf 'guest-image: %s\n' "$*" >&2; }
die() { printf 'guest-image: error: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "required tool '$1' not found ($2)"; }

usage() {
    cat >&2 <<EOF
usage: $0 --agent PATH_TO_STATIC_AGENT_BINARY [--out DIR]
  --agent PATH  statically linked agent binary, installed as /init in the initramfs
  --out DIR     output directory (default: $REPO_DIR/build/guest)
EOF
}

# ---------------------------------------------------------------------------------------------
# Arguments
AGENT=""
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --agent) [ $# -ge 2 ] || { usage; die "--agent needs a value"; }; AGENT=$2; shift 2 ;;
        --agent=*) AGENT=${1#--agent=}; shift ;;
        --out) [ $# -ge 2 ] || { usage; die "--out needs a value"; }; OUT=$2; shift 2 ;;
        --out=*) OUT=${1#--out=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage; die "unknown argument: $1" ;;
    esac
done
[ -n "$AGENT" ] || { usage; die "--agent is required"; }
[ -e "$AGENT" ] || die "agent binary not found: $AGENT"
[ -f "$AGENT" ] || die "agent binary is not a regular file: $AGENT"
[ -r "$AGENT" ] || die "agent binary is not readable: $AGENT"
AGENT=$(readlink -f "$AGENT")
[ "$(head -c 4 "$AGENT" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] \
    || die "agent binary is not an ELF file: $AGENT"
if command -v file >/dev/null 2>&1 && file -b "$AGENT" | grep -q 'dynamically linked'; then
    log "warning: agent binary looks dynamically linked; the guest has no libraries: $AGENT"
fi

[ -n "$OUT" ] || OUT=$REPO_DIR/build/guest
mkdir -p "$OUT" || die "cannot create output directory: $OUT"
OUT=$(realpath "$OUT")
CACHE=$OUT/cache
KROOT=$CACHE/kernel-root
mkdir -p "$CACHE"

need sha256sum "hashing"
need od "file checks"

# One build per output directory at a time (tests may run in parallel).
if command -v flock >/dev/null 2>&1; then
    exec 9>>"$OUT/.lock"
    flock -w 900 9 || die "timed out waiting for the lock on $OUT/.lock"
    # Holding the lock: anything temporary left here was left by a killed run.
    rm -rf -- "$OUT"/.staging.* "$OUT"/.vmlinux.tmp.* "$OUT"/.stamp.tmp \
        "$CACHE"/.download.* "$CACHE"/.kernel-root.*
fi

# shellcheck source=../scripts/lib/debian-kernel.sh
. "$LIB"
trap remove_tmp_paths EXIT

# ---------------------------------------------------------------------------------------------
# Kernel package: resolve the concrete package behind the metapackage.
kernel_resolve "$KERNEL_META" cloud-amd64 "$CACHE"

# ---------------------------------------------------------------------------------------------
# Up-to-date check.
STAMP_FILE=$OUT/.stamp
SCRIPT_SHA=$(cat "$SCRIPT_PATH" "$LIB" | sha256sum | cut -d' ' -f1)
AGENT_SHA=$(sha256sum < "$AGENT" | cut -d' ' -f1)
compute_stamp() {
    printf 'script %s\nagent %s\ndeb %s\nmodules %s\non demand %s\n' \
        "$SCRIPT_SHA" "$AGENT_SHA" "$DEB" "${MODULES[*]}" "${ON_DEMAND[*]}" \
        | sha256sum | cut -d' ' -f1
}
STAMP=$(compute_stamp)
result() { printf 'guest image: %s/vmlinux %s/initramfs.img\n' "$OUT" "$OUT" >&3; }

if [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$STAMP" ] \
    && [ -s "$OUT/vmlinux" ] && [ -s "$OUT/initramfs.img" ] && [ -s "$OUT/kernel.version" ]; then
    log "guest image up to date"
    result
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# Download and unpack (both cached).
OLD_DEB=$DEB
kernel_fetch "$CACHE"
[ "$DEB" = "$OLD_DEB" ] || STAMP=$(compute_stamp)
kernel_unpack "$CACHE" "$KROOT"

# ---------------------------------------------------------------------------------------------
# vmlinux: extract the ELF from the bzImage payload (like the kernel's scripts/extract-vmlinux).
VMLINUX_STAMP=$CACHE/vmlinux.deb

# Byte offsets (1-based, for tail -c +N) of a magic in the image. The tr trick is from
# extract-vmlinux: the magic's first byte becomes a newline and its other bytes placeholders.
magic_positions() {
    local img=$1 magic=$2 n ph
    n=$(printf "$magic" | wc -c)
    ph=$(printf '%*s' $((n - 1)) '' | tr ' ' x)
    tr "$magic\n$ph" "\n$ph=" < "$img" | grep -abo "^$ph" | cut -d: -f1 || true
}

extract_vmlinux() {
    local img=$1 dst=$2 magic tool fmt pos tried=()
    if is_elf "$img"; then cp "$img" "$dst"; log "vmlinuz is already an ELF"; return 0; fi
    while read -r fmt magic tool; do
        command -v "${tool%% *}" >/dev/null 2>&1 || continue
        tried+=("$fmt")
        for pos in $(magic_positions "$img" "$magic"); do
            tail -c "+$pos" "$img" | $tool > "$dst" 2>/dev/null || true
            if is_elf "$dst"; then
                log "vmlinuz payload: $fmt at byte offset $((pos - 1))"
                return 0
            fi
        done
    done <<'EOF'
lz4 \002!L\030 lz4 -dc
gzip \037\213\010 gzip -dc
xz \3757zXZ\000 xz -dc
zstd (\265/\375 zstd -q -dc
EOF
    rm -f "$dst"
    die "could not extract an ELF vmlinux from $img (tried: ${tried[*]-no decompressor available})"
}

if [ -s "$OUT/vmlinux" ] && [ -f "$VMLINUX_STAMP" ] && [ "$(cat "$VMLINUX_STAMP")" = "$DEB" ]; then
    log "vmlinux up to date"
else
    log "extracting vmlinux from $VMLINUZ"
    VTMP=$OUT/.vmlinux.tmp.$$
    TMP_PATHS+=("$VTMP")
    extract_vmlinux "$VMLINUZ" "$VTMP"
    mv -f "$VTMP" "$OUT/vmlinux"
    printf '%s\n' "$DEB" > "$VMLINUX_STAMP"
fi

# ---------------------------------------------------------------------------------------------
# Modules: resolve dependencies, skip built-ins.
modules_order "$MODDIR" "${MODULES[@]}"
if [ "${#BUILTIN_HIT[@]}" -gt 0 ]; then
    log "built into the kernel (not packed): ${BUILTIN_HIT[*]}"
else
    log "built into the kernel: none of the requested modules"
fi
log "module load order: ${ORDER[*]}"
BOOT_ORDER=("${ORDER[@]}")
declare -A AT_BOOT=()
for n in "${BOOT_ORDER[@]}"; do AT_BOOT[$n]=1; done

# on_demand_install MODDIR DEST INDEX: packs the ON_DEMAND modules and their dependencies
# (those not loaded at boot) zstd-compressed into DEST and writes the index the guest's modprobe
# reads, one record a line:
#   module NAME FILE DEP...       (DEP: the module names it needs, from modules.dep)
#   alias PATTERN NAME            (a shell glob the kernel's requests are matched against)
#   softdep NAME pre: A B post: C (as modinfo writes it)
on_demand_install() {
    local moddir=$1 dest=$2 index=$3 n src d deps info line
    modules_order "$moddir" "${ON_DEMAND[@]}"
    : > "$index"
    for n in "${BOOT_ORDER[@]}"; do
        deps=()
        for d in ${DEP_LIST[$n]}; do modname "$d"; deps+=("$MN"); done
        printf 'module %s %s.ko%s\n' "$n" "$n" "${deps[*]+ ${deps[*]}}" >> "$index"
    done
    local packed=0
    for n in "${ORDER[@]}"; do
        [ -z "${AT_BOOT[$n]:-}" ] || continue
        src=$moddir/${DEP_PATH[$n]}
        info=$(module_cat "$src" | tr '\0' '\n' | grep -a -E '^(alias|softdep)=' || true)
        module_cat "$src" | zstd -q -19 -c > "$dest/$n.ko.zst" || die "cannot compress $src"
        deps=()
        for d in ${DEP_LIST[$n]}; do modname "$d"; deps+=("$MN"); done
        printf 'module %s %s.ko.zst%s\n' "$n" "$n" "${deps[*]+ ${deps[*]}}" >> "$index"
        while IFS= read -r line; do
            case "$line" in
                alias=*) printf 'alias %s %s\n' "${line#alias=}" "$n" ;;
                softdep=*) printf 'softdep %s %s\n' "$n" "${line#softdep=}" ;;
            esac
        done <<< "$info" >> "$index"
        packed=$((packed + 1))
    done
    log "on demand: $packed modules ($(du -cb "$dest"/*.ko.zst | tail -n 1 | cut -f1) bytes compressed)"
}

# ---------------------------------------------------------------------------------------------
# Initramfs: stage, pack reproducibly, rename into place.
need cpio "packing the initramfs"
need zstd "compressing the on-demand modules"
STAGE=$(mktemp -d "$OUT/.staging.XXXXXX")
TMP_PATHS+=("$STAGE")
ROOT=$STAGE/root
mkdir -p "$ROOT"/{proc,sys,dev,run,tmp,mnt,etc/vessel,lib/modules,sbin}
install -m 0755 "$AGENT" "$ROOT/init"
ln -s ../init "$ROOT/sbin/modprobe"
ORDER=("${BOOT_ORDER[@]}")
modules_install "$MODDIR" "$ROOT/lib/modules" "$ROOT/etc/vessel/modules.load"
on_demand_install "$MODDIR" "$ROOT/lib/modules" "$ROOT/etc/vessel/modules.index"
chmod 0755 "$ROOT"/{proc,sys,dev,run,tmp,mnt,etc,etc/vessel,lib,lib/modules,sbin}
find "$ROOT/etc/vessel" "$ROOT/lib/modules" -type f -exec chmod 0644 {} +

log "packing $OUT/initramfs.img (uncompressed newc cpio)"
cpio_pack "$ROOT" "$STAGE/initramfs.img"
printf '%s\n' "$KVER" > "$STAGE/kernel.version"
mv -f "$STAGE/initramfs.img" "$OUT/initramfs.img"
if [ ! -f "$OUT/kernel.version" ] || [ "$(cat "$OUT/kernel.version")" != "$KVER" ]; then
    mv -f "$STAGE/kernel.version" "$OUT/kernel.version"
fi
printf '%s\n' "$STAMP" > "$OUT/.stamp.tmp"
mv -f "$OUT/.stamp.tmp" "$OUT/.stamp"

log "built $OUT/initramfs.img ($(stat -c %s "$OUT/initramfs.img") bytes, ${#BOOT_ORDER[@]} modules at boot)"
result
