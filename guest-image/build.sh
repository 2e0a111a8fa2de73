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

KERNEL_META=linux-image-cloud-amd64

# Modules the agent loads. Dependencies (from modules.dep) are put first automatically, so the
# written load order can differ from this list (virtio itself depends on virtio_ring).
MODULES=(
    virtio virtio_ring virtio_mmio
    vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport
    fuse virtiofs
    overlay
    failover net_failover virtio_net
    virtio_blk
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

TMP_PATHS=()
cleanup() {
    local p
    for p in "${TMP_PATHS[@]+"${TMP_PATHS[@]}"}"; do rm -rf -- "$p"; done
}
trap cleanup EXIT

is_elf() { [ -s "$1" ] && [ "$(head -c 4 "$1" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; }

# ---------------------------------------------------------------------------------------------
# Kernel package: resolve the concrete package behind the metapackage.
APT_UPDATED=0
apt_update_once() {
    [ "$APT_UPDATED" = 0 ] || return 1
    APT_UPDATED=1
    command -v apt-get >/dev/null 2>&1 || return 1
    log "running apt-get update"
    apt-get update >&2 || log "warning: apt-get update failed"
    return 0
}

# Prints "<package> <version>" from the candidate metapackage's Depends line, e.g.
# "linux-image-6.1.0-56-cloud-amd64 6.1.192-2" (one apt-cache call: it is the slow part of a
# no-op rebuild).
resolve_kernel_pkg() {
    command -v apt-cache >/dev/null 2>&1 || return 0
    apt-cache show --no-all-versions "$KERNEL_META" 2>/dev/null \
        | sed -n 's/^Depends:.*\(linux-image-[0-9][^ ,|]*-cloud-amd64\) (= \([^)]*\)).*/\1 \2/p' \
        | head -n 1 || true
}

RESOLVED=$(resolve_kernel_pkg)
if [ -z "$RESOLVED" ] && apt_update_once; then
    RESOLVED=$(resolve_kernel_pkg)
fi

DEB=""
if [ -n "$RESOLVED" ]; then
    read -r KPKG KPKG_VER <<< "$RESOLVED"
    # apt-get download names files <pkg>_<version with ':' as %3a>_<arch>.deb
    DEB=${KPKG}_${KPKG_VER//:/%3a}_amd64.deb
    log "kernel package: $KPKG $KPKG_VER (from $KERNEL_META)"
else
    # No package lists (offline?): fall back to the newest cached kernel package, if any.
    DEB=$(cd "$CACHE" && ls -1 linux-image-*-cloud-amd64_*_amd64.deb 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$DEB" ] || die "cannot resolve the package behind $KERNEL_META (apt-cache show found no linux-image-*-cloud-amd64 dependency, even after apt-get update) and no kernel .deb is cached in $CACHE"
    KPKG=${DEB%%_*}
    KPKG_VER=""
    log "warning: cannot resolve $KERNEL_META with apt-cache; using cached $DEB"
fi

# ---------------------------------------------------------------------------------------------
# Up-to-date check.
STAMP_FILE=$OUT/.stamp
SCRIPT_SHA=$(sha256sum < "$SCRIPT_PATH" | cut -d' ' -f1)
AGENT_SHA=$(sha256sum < "$AGENT" | cut -d' ' -f1)
compute_stamp() {
    printf 'script %s\nagent %s\ndeb %s\nmodules %s\n' \
        "$SCRIPT_SHA" "$AGENT_SHA" "$DEB" "${MODULES[*]}" | sha256sum | cut -d' ' -f1
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
# Download (cached).
if [ -f "$CACHE/$DEB" ]; then
    log "using cached $CACHE/$DEB"
else
    need apt-get "downloading the kernel package"
    need dpkg-deb "checking the kernel package"
    DL=$(mktemp -d "$CACHE/.download.XXXXXX")
    TMP_PATHS+=("$DL")
    SPEC=$KPKG${KPKG_VER:+=$KPKG_VER}
    log "downloading $SPEC into $CACHE"
    if ! (cd "$DL" && apt-get download "$SPEC" >&2); then
        if apt_update_once && (cd "$DL" && apt-get download "$SPEC" >&2); then
            :
        else
            die "apt-get download $SPEC failed"
        fi
    fi
    GOT=$(cd "$DL" && ls -1 "${KPKG}"_*.deb 2>/dev/null | head -n 1 || true)
    [ -n "$GOT" ] || die "apt-get download $SPEC produced no .deb"
    dpkg-deb --info "$DL/$GOT" >/dev/null || die "downloaded package is not a valid .deb: $GOT"
    if [ "$GOT" != "$DEB" ]; then
        # Versions changed between apt-cache and apt-get (lists refreshed): trust the download.
        log "note: downloaded $GOT (expected $DEB)"
        DEB=$GOT
        STAMP=$(compute_stamp)
    fi
    mv -f "$DL/$GOT" "$CACHE/$DEB"
fi

# ---------------------------------------------------------------------------------------------
# Unpack (cached per .deb) and make sure modules.dep exists.

# Module name of a path in modules.dep (basename, no .ko[.xz|.zst|.gz], '-' -> '_'), into $MN
# (no subshell: this runs once per module of the kernel).
modname() {
    MN=${1##*/}
    MN=${MN%.ko*}
    MN=${MN//-/_}
}

# Decompress (or copy) a module file to stdout.
module_cat() {
    case "$1" in
        *.ko) cat "$1" ;;
        *.ko.xz) need xz "decompressing $1"; xz -dc "$1" ;;
        *.ko.zst) need zstd "decompressing $1"; zstd -q -dc "$1" ;;
        *.ko.gz) need gzip "decompressing $1"; gzip -dc "$1" ;;
        *) die "unknown module file type: $1" ;;
    esac
}

# The Debian package ships no modules.dep (depmod runs at install time). Write one in the same
# format from each module's .modinfo "depends=" field (direct dependencies only; the resolver
# below recurses, so either format works).
synth_modules_dep() {
    local mdir=$1 f deps d dl out=()
    declare -A path_of=()
    while IFS= read -r f; do
        modname "$f"
        path_of[$MN]=$f
    done < <(cd "$mdir" && find kernel -type f -name '*.ko*' | sort)
    while IFS= read -r f; do
        deps=$(module_cat "$mdir/$f" | tr '\0' '\n' | grep -a -m1 '^depends=' || true)
        deps=${deps#depends=}
        out=()
        if [ -n "$deps" ]; then
            IFS=, read -r -a dl <<< "$deps"
            for d in "${dl[@]}"; do
                d=${d//-/_}
                if [ -n "${path_of[$d]:-}" ]; then
                    out+=("${path_of[$d]}")
                else
                    log "warning: module $f depends on $d, which is not in the package"
                fi
            done
        fi
        printf '%s:%s\n' "$f" "${out[*]+ ${out[*]}}"
    done < <(printf '%s\n' "${path_of[@]}" | sort) > "$mdir/modules.dep.tmp"
    mv -f "$mdir/modules.dep.tmp" "$mdir/modules.dep"
}

if [ -f "$KROOT/.vessel-deb" ] && [ "$(cat "$KROOT/.vessel-deb")" = "$DEB" ]; then
    log "using unpacked kernel in $KROOT"
else
    need dpkg-deb "unpacking the kernel package"
    log "unpacking $DEB into $KROOT"
    UNPACK=$(mktemp -d "$CACHE/.kernel-root.XXXXXX")
    TMP_PATHS+=("$UNPACK")
    dpkg-deb -x "$CACHE/$DEB" "$UNPACK" || die "dpkg -x $CACHE/$DEB failed"
    for d in "$UNPACK"/lib/modules/*/; do
        if [ ! -f "$d/modules.dep" ]; then
            log "package has no modules.dep; generating it from module .modinfo sections"
            synth_modules_dep "${d%/}"
        fi
    done
    printf '%s\n' "$DEB" > "$UNPACK/.vessel-deb"
    rm -rf "$KROOT"
    mv "$UNPACK" "$KROOT"
fi

KVERS=()
for d in "$KROOT"/lib/modules/*/; do
    [ -d "$d" ] && KVERS+=("$(basename "$d")")
done
[ "${#KVERS[@]}" -eq 1 ] || die "expected exactly one lib/modules/<kver> in $DEB, found ${#KVERS[@]}: ${KVERS[*]-}"
KVER=${KVERS[0]}
MODDIR=$KROOT/lib/modules/$KVER
VMLINUZ=$KROOT/boot/vmlinuz-$KVER
[ -f "$VMLINUZ" ] || die "kernel image not found in $DEB: boot/vmlinuz-$KVER"
[ -f "$MODDIR/modules.dep" ] || die "modules.dep not found: $MODDIR/modules.dep"
log "kernel version: $KVER"

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
declare -A DEP_PATH=() DEP_LIST=() BUILTIN=() STATE=()
while IFS= read -r line; do
    [ -n "$line" ] || continue
    p=${line%%:*}
    modname "$p"
    DEP_PATH[$MN]=$p
    DEP_LIST[$MN]=${line#*:}
done < "$MODDIR/modules.dep"
if [ -f "$MODDIR/modules.builtin" ]; then
    while IFS= read -r line; do
        [ -n "$line" ] || continue
        modname "$line"
        BUILTIN[$MN]=1
    done < "$MODDIR/modules.builtin"
else
    log "warning: no modules.builtin in $DEB; assuming nothing is built in"
fi

ORDER=()
BUILTIN_HIT=()
resolve() {
    local n=$1 d
    case "${STATE[$n]:-}" in
        done) return 0 ;;
        active) die "dependency cycle at module $n" ;;
    esac
    if [ -n "${BUILTIN[$n]:-}" ]; then
        STATE[$n]=done
        BUILTIN_HIT+=("$n")
        return 0
    fi
    [ -n "${DEP_PATH[$n]:-}" ] || die "module $n not found in modules.dep ($MODDIR/modules.dep)"
    STATE[$n]=active
    for d in ${DEP_LIST[$n]}; do
        modname "$d"
        resolve "$MN"
    done
    STATE[$n]=done
    ORDER+=("$n")
}
for m in "${MODULES[@]}"; do
    resolve "${m//-/_}"
done
if [ "${#BUILTIN_HIT[@]}" -gt 0 ]; then
    log "built into the kernel (not packed): ${BUILTIN_HIT[*]}"
else
    log "built into the kernel: none of the requested modules"
fi
log "module load order: ${ORDER[*]}"

# ---------------------------------------------------------------------------------------------
# Initramfs: stage, pack reproducibly, rename into place.
need cpio "packing the initramfs"
STAGE=$(mktemp -d "$OUT/.staging.XXXXXX")
TMP_PATHS+=("$STAGE")
ROOT=$STAGE/root
mkdir -p "$ROOT"/{proc,sys,dev,run,tmp,mnt,etc/vessel,lib/modules}
install -m 0755 "$AGENT" "$ROOT/init"
: > "$ROOT/etc/vessel/modules.load"
for n in "${ORDER[@]}"; do
    src=$MODDIR/${DEP_PATH[$n]}
    [ -f "$src" ] || die "module file missing from package: $src"
    module_cat "$src" > "$ROOT/lib/modules/$n.ko" || die "cannot decompress $src"
    is_elf "$ROOT/lib/modules/$n.ko" || die "module $n is not an ELF object after decompression: $src"
    printf '%s.ko\n' "$n" >> "$ROOT/etc/vessel/modules.load"
done
chmod 0755 "$ROOT"/{proc,sys,dev,run,tmp,mnt,etc,etc/vessel,lib,lib/modules}
find "$ROOT/etc/vessel" "$ROOT/lib/modules" -type f -exec chmod 0644 {} +
find "$ROOT" -exec touch -h -d @0 {} +

log "packing $OUT/initramfs.img (uncompressed newc cpio)"
(cd "$ROOT" && find . -mindepth 1 -printf '%P\n' | sort \
    | cpio --quiet --reproducible -o -H newc --owner 0:0) > "$STAGE/initramfs.img" \
    || die "cpio failed"
printf '%s\n' "$KVER" > "$STAGE/kernel.version"
mv -f "$STAGE/initramfs.img" "$OUT/initramfs.img"
if [ ! -f "$OUT/kernel.version" ] || [ "$(cat "$OUT/kernel.version")" != "$KVER" ]; then
    mv -f "$STAGE/kernel.version" "$OUT/kernel.version"
fi
printf '%s\n' "$STAMP" > "$OUT/.stamp.tmp"
mv -f "$OUT/.stamp.tmp" "$OUT/.stamp"

log "built $OUT/initramfs.img ($(stat -c %s "$OUT/initramfs.img") bytes, ${#ORDER[@]} modules)"
result
