# Debian kernel packages for vessel's own VMs, shared by guest-image/build.sh (the pod guest's
# cloud kernel) and scripts/nested-kvm.sh (the nested-KVM test host's generic kernel): resolve
# the package behind a metapackage, fetch it with `apt-get download` (never installed), unpack
# it with `dpkg-deb -x`, and order kernel modules by their dependencies.
#
# Source it from bash after defining log MSG and die MSG. Functions set globals, named below.

# Temporary files and dirs to delete when the script exits: `trap remove_tmp_paths EXIT`.
TMP_PATHS=()
remove_tmp_paths() {
    local p
    for p in "${TMP_PATHS[@]+"${TMP_PATHS[@]}"}"; do rm -rf -- "$p"; done
}

APT_UPDATED=0
# Runs `apt-get update` once per script run; fails when it already ran or apt is missing.
apt_update_once() {
    [ "$APT_UPDATED" = 0 ] || return 1
    APT_UPDATED=1
    command -v apt-get >/dev/null 2>&1 || return 1
    log "running apt-get update"
    apt-get update >&2 || log "warning: apt-get update failed"
    return 0
}

is_elf() { [ -s "$1" ] && [ "$(head -c 4 "$1" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; }

# Prints "<package> <version>" from the candidate metapackage's Depends line, e.g.
# "linux-image-6.1.0-56-cloud-amd64 6.1.192-2" for META linux-image-cloud-amd64 and FLAVOUR
# cloud-amd64 (one apt-cache call: it is the slow part of a no-op rebuild).
kernel_pkg_of() {
    local meta=$1 flavour=$2
    command -v apt-cache >/dev/null 2>&1 || return 0
    apt-cache show --no-all-versions "$meta" 2>/dev/null \
        | sed -n "s/^Depends:.*\(linux-image-[0-9][^ ,|]*-$flavour\) (= \([^)]*\)).*/\1 \2/p" \
        | head -n 1 || true
}

# kernel_resolve META FLAVOUR CACHE: the concrete package behind META. Sets KPKG, KPKG_VER and
# DEB (the file name `apt-get download` gives it). Offline, falls back to the newest package of
# that flavour already in CACHE (KPKG_VER is then empty).
kernel_resolve() {
    local meta=$1 flavour=$2 cache=$3 resolved
    resolved=$(kernel_pkg_of "$meta" "$flavour")
    if [ -z "$resolved" ] && apt_update_once; then
        resolved=$(kernel_pkg_of "$meta" "$flavour")
    fi
    if [ -n "$resolved" ]; then
        read -r KPKG KPKG_VER <<< "$resolved"
        # apt-get download names files <pkg>_<version with ':' as %3a>_<arch>.deb
        DEB=${KPKG}_${KPKG_VER//:/%3a}_amd64.deb
        log "kernel package: $KPKG $KPKG_VER (from $meta)"
    else
        DEB=$(cd "$cache" && ls -1 linux-image-*-"$flavour"_*_amd64.deb 2>/dev/null | sort -V | tail -n 1 || true)
        [ -n "$DEB" ] || die "cannot resolve the package behind $meta (apt-cache show found no linux-image-*-$flavour dependency, even after apt-get update) and no kernel .deb is cached in $cache"
        KPKG=${DEB%%_*}
        KPKG_VER=""
        log "warning: cannot resolve $meta with apt-cache; using cached $DEB"
    fi
}

# kernel_fetch CACHE: downloads $DEB into CACHE unless it is there. DEB changes when the
# package lists moved on between apt-cache and apt-get (the download is trusted then).
kernel_fetch() {
    local cache=$1 dl spec got
    if [ -f "$cache/$DEB" ]; then
        log "using cached $cache/$DEB"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found (downloading the kernel package)"
    command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found (checking the kernel package)"
    dl=$(mktemp -d "$cache/.download.XXXXXX")
    TMP_PATHS+=("$dl")
    spec=$KPKG${KPKG_VER:+=$KPKG_VER}
    log "downloading $spec into $cache"
    if ! (cd "$dl" && apt-get download "$spec" >&2); then
        if apt_update_once && (cd "$dl" && apt-get download "$spec" >&2); then
            :
        else
            die "apt-get download $spec failed"
        fi
    fi
    got=$(cd "$dl" && ls -1 "${KPKG}"_*.deb 2>/dev/null | head -n 1 || true)
    [ -n "$got" ] || die "apt-get download $spec produced no .deb"
    dpkg-deb --info "$dl/$got" >/dev/null || die "downloaded package is not a valid .deb: $got"
    if [ "$got" != "$DEB" ]; then
        log "note: downloaded $got (expected $DEB)"
        DEB=$got
    fi
    mv -f "$dl/$got" "$cache/$DEB"
}

# Module name of a path in modules.dep (basename, no .ko[.xz|.zst|.gz], '-' -> '_'), into $MN
# (no subshell: this runs once per module of the kernel).
modname() {
    MN=${1##*/}
    MN=${MN%.ko*}
    MN=${MN//-/_}
}

# Decompresses (or copies) a module file to stdout.
module_cat() {
    case "$1" in
        *.ko) cat "$1" ;;
        *.ko.xz) xz -dc "$1" ;;
        *.ko.zst) zstd -q -dc "$1" ;;
        *.ko.gz) gzip -dc "$1" ;;
        *) die "unknown module file type: $1" ;;
    esac
}

# The Debian package ships no modules.dep (depmod runs at install time). Writes one in the same
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

# kernel_unpack CACHE KROOT: unpacks $DEB (from CACHE) into KROOT unless it is there already,
# with a modules.dep. Sets KVER, MODDIR and VMLINUZ.
kernel_unpack() {
    local cache=$1 kroot=$2 unpack d kvers=()
    if [ -f "$kroot/.vessel-deb" ] && [ "$(cat "$kroot/.vessel-deb")" = "$DEB" ]; then
        log "using unpacked kernel in $kroot"
    else
        command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found (unpacking the kernel package)"
        log "unpacking $DEB into $kroot"
        unpack=$(mktemp -d "$cache/.kernel-root.XXXXXX")
        TMP_PATHS+=("$unpack")
        dpkg-deb -x "$cache/$DEB" "$unpack" || die "dpkg -x $cache/$DEB failed"
        for d in "$unpack"/lib/modules/*/; do
            if [ ! -f "$d/modules.dep" ]; then
                log "package has no modules.dep; generating it from module .modinfo sections"
                synth_modules_dep "${d%/}"
            fi
        done
        printf '%s\n' "$DEB" > "$unpack/.vessel-deb"
        rm -rf "$kroot"
        mv "$unpack" "$kroot"
    fi
    for d in "$kroot"/lib/modules/*/; do
        [ -d "$d" ] && kvers+=("$(basename "$d")")
    done
    [ "${#kvers[@]}" -eq 1 ] || die "expected exactly one lib/modules/<kver> in $DEB, found ${#kvers[@]}: ${kvers[*]-}"
    KVER=${kvers[0]}
    MODDIR=$kroot/lib/modules/$KVER
    VMLINUZ=$kroot/boot/vmlinuz-$KVER
    [ -f "$VMLINUZ" ] || die "kernel image not found in $DEB: boot/vmlinuz-$KVER"
    [ -f "$MODDIR/modules.dep" ] || die "modules.dep not found: $MODDIR/modules.dep"
    log "kernel version: $KVER"
}

# modules_order MODDIR NAME...: the modules NAME... and their dependencies, dependencies first,
# without duplicates or built-ins. Sets ORDER (names), DEP_PATH (name -> path in MODDIR) and
# BUILTIN_HIT (requested or needed names the kernel has built in).
modules_order() {
    local moddir=$1 line p m
    shift
    declare -gA DEP_PATH=() DEP_LIST=() BUILTIN=() STATE=()
    ORDER=()
    BUILTIN_HIT=()
    while IFS= read -r line; do
        [ -n "$line" ] || continue
        p=${line%%:*}
        modname "$p"
        DEP_PATH[$MN]=$p
        DEP_LIST[$MN]=${line#*:}
    done < "$moddir/modules.dep"
    if [ -f "$moddir/modules.builtin" ]; then
        while IFS= read -r line; do
            [ -n "$line" ] || continue
            modname "$line"
            BUILTIN[$MN]=1
        done < "$moddir/modules.builtin"
    else
        log "warning: no modules.builtin in $moddir; assuming nothing is built in"
    fi
    for m in "$@"; do
        _module_resolve "${m//-/_}" "$moddir"
    done
}

_module_resolve() {
    local n=$1 moddir=$2 d
    case "${STATE[$n]:-}" in
        done) return 0 ;;
        active) die "dependency cycle at module $n" ;;
    esac
    if [ -n "${BUILTIN[$n]:-}" ]; then
        STATE[$n]=done
        BUILTIN_HIT+=("$n")
        return 0
    fi
    [ -n "${DEP_PATH[$n]:-}" ] || die "module $n not found in modules.dep ($moddir/modules.dep)"
    STATE[$n]=active
    for d in ${DEP_LIST[$n]}; do
        modname "$d"
        _module_resolve "$MN" "$moddir"
    done
    STATE[$n]=done
    ORDER+=("$n")
}

# modules_install MODDIR DEST LIST: writes each module of ORDER, decompressed, to
# DEST/<name>.ko and its file name to the load list LIST, in load order.
modules_install() {
    local moddir=$1 dest=$2 list=$3 n src
    : > "$list"
    for n in "${ORDER[@]}"; do
        src=$moddir/${DEP_PATH[$n]}
        [ -f "$src" ] || die "module file missing from package: $src"
        module_cat "$src" > "$dest/$n.ko" || die "cannot decompress $src"
        is_elf "$dest/$n.ko" || die "module $n is not an ELF object after decompression: $src"
        printf '%s.ko\n' "$n" >> "$list"
    done
}

# cpio_pack ROOT IMAGE: an uncompressed, reproducible newc cpio of ROOT (sorted, mtimes 0,
# owner 0:0).
cpio_pack() {
    local root=$1 image=$2
    command -v cpio >/dev/null 2>&1 || die "cpio not found (packing the initramfs)"
    find "$root" -exec touch -h -d @0 {} +
    (cd "$root" && find . -mindepth 1 -printf '%P\n' | sort \
        | cpio --quiet --reproducible -o -H newc --owner 0:0) > "$image" \
        || die "cpio failed"
}
