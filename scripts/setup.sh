#!/usr/bin/env bash
# Installs what vessel needs on a fresh Debian machine, skipping what is present:
# Debian packages (QEMU, busybox-static, protoc, cpio/lz4 for the guest image, libraries that
# virtiofsd links, the docker-registry, htpasswd and openssl the image tests serve images with,
# the CNI reference plugins in /usr/lib/cni), the single-node pod network config (unless the
# node has one) and the
# vhost-user helpers (virtiofsd, vhost-device-vsock) built with
# `cargo install --root` into the build tree. Needs root only when something is missing.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
tools="$repo/build/tools"

packages=(qemu-system-x86 busybox-static protobuf-compiler cpio lz4 xz-utils zstd file
          libseccomp-dev libcap-ng-dev pkg-config docker-registry apache2-utils openssl iptables
          containernetworking-plugins)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: must run as root to install ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Versions are pinned so every machine runs the helpers the tests were written against.
declare -A crates=([virtiofsd]=1.14.0 [vhost-device-vsock]=0.3.0)
for bin in "${!crates[@]}"; do
  if [ ! -x "$tools/bin/$bin" ]; then
    echo "setup: cargo install $bin ${crates[$bin]} into $tools" >&2
    cargo install --locked --quiet --root "$tools" --version "${crates[$bin]}" "$bin"
  fi
done

# The single-node pod network (bridge vessel0, host-local addresses on 10.89.0.0/16, NAT to
# the outside, host ports), unless the node already has a network config: a CNI agent's or
# an operator's is never overwritten.
cni_dir=/etc/cni/net.d
if ! ls "$cni_dir"/*.conflist "$cni_dir"/*.conf "$cni_dir"/*.json >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: must run as root to install the pod network config into $cni_dir" >&2
    exit 1
  fi
  echo "setup: installing the single-node pod network config $cni_dir/10-vessel.conflist" >&2
  install -D -m 0644 "$repo/deploy/cni/10-vessel.conflist" "$cni_dir/10-vessel.conflist"
fi
