#!/usr/bin/env bash
# Install the Debian packages twinbd's tests and benchmarks use, when missing.
# Idempotent and quiet when everything is present. Needs root (CI runs as root).
set -euo pipefail

# command → Debian package
declare -A need=(
  [nbdinfo]=libnbd-bin [nbdcopy]=libnbd-bin [nbdfuse]=libnbd-bin
  [fio]=fio [qemu-img]=qemu-utils [qemu-io]=qemu-utils [nbdkit]=nbdkit
  [fusermount3]=fuse3 [mkfs.ext4]=e2fsprogs [e2fsck]=e2fsprogs
  [losetup]=mount [python3]=python3
  [qemu-system-x86_64]=qemu-system-x86 [cpio]=cpio
  [ocf-tester]=resource-agents [xmllint]=libxml2-utils [mariadbd]=mariadb-server [mariadb]=mariadb-client
  [rabbitmq-server]=rabbitmq-server
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" != 0 ]; then
  echo "deps: missing packages: $pkgs; run as root or: apt-get install $pkgs" >&2
  exit 1
fi
echo "deps: installing $pkgs" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
