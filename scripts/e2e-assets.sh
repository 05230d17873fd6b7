#!/usr/bin/env bash
# Build the assets of the VM end-to-end tests (e2e/): Debian's kernel
# (linux-image-amd64, which ships nbd.ko as a module) and a busybox
# initramfs with Debian's nbd-client, mke2fs/e2fsck and the kernel modules
# the guest needs (virtio-net, virtio-blk, nbd, ext4 and their dependencies).
#
# Packages come from the configured Debian mirror with `apt-get download`
# and are unpacked with dpkg-deb -x; nothing is installed on the host. The
# result is cached: a second run with the same script does nothing.
#
#   scripts/e2e-assets.sh            # prints the asset directory on stdout
#
# Output (in $TWINBD_E2E_CACHE, default /var/cache/twinbd-e2e when writable,
# else $HOME/.cache/twinbd-e2e):
#   vmlinuz             the kernel
#   initramfs.cpio.gz   busybox, nbd-client, mke2fs, e2fsck, modules, /init
#   stamp               hash of this script: assets are rebuilt when it changes
#
# The guest's /init mounts /proc, /sys, /dev, loads the modules, configures
# eth0 for qemu user networking (10.0.2.15/24, host at 10.0.2.2), then runs
# /scenario.sh (which the test appends as a second cpio archive) with the
# kernel command line's twinbd.* parameters exported as TWINBD_*; it prints
# "TWINBD-E2E-EXIT <rc>" and powers off.
set -euo pipefail

self=$(readlink -f "$0")
if [ -n "${TWINBD_E2E_CACHE:-}" ]; then
  CACHE=$TWINBD_E2E_CACHE
elif mkdir -p /var/cache/twinbd-e2e 2>/dev/null && [ -w /var/cache/twinbd-e2e ]; then
  CACHE=/var/cache/twinbd-e2e
else
  CACHE=$HOME/.cache/twinbd-e2e
fi
mkdir -p "$CACHE"
stamp=$(sha256sum "$self" | cut -d' ' -f1)
if [ -s "$CACHE/vmlinuz" ] && [ -s "$CACHE/initramfs.cpio.gz" ] && [ "$(cat "$CACHE/stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$CACHE"
  exit 0
fi

log() { echo "e2e-assets: $*" >&2; }
for tool in apt-get dpkg-deb cpio gzip ldd; do
  command -v "$tool" >/dev/null || { log "missing $tool"; exit 1; }
done
for tool in mke2fs e2fsck; do
  command -v "$tool" >/dev/null || PATH=$PATH:/sbin:/usr/sbin
  command -v "$tool" >/dev/null || { log "missing $tool (package e2fsprogs)"; exit 1; }
done

debs=$CACHE/debs
mkdir -p "$debs"
# apt-get download writes into the current directory; as root, _apt cannot
# write there, which is harmless (apt falls back to downloading unsandboxed).
fetch() { # package...
  local missing=()
  for p in "$@"; do
    compgen -G "$debs/${p}_*.deb" >/dev/null || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "downloading ${missing[*]}"
  if ! (cd "$debs" && apt-get download -q "${missing[@]}" >/dev/null 2>"$CACHE/apt.err"); then
    log "apt-get download failed; running apt-get update once"
    apt-get update -qq >/dev/null 2>&1 || true
    (cd "$debs" && apt-get download -q "${missing[@]}" >/dev/null 2>"$CACHE/apt.err") ||
      { cat "$CACHE/apt.err" >&2; exit 1; }
  fi
}

# linux-image-amd64 is a metapackage: its dependency names the real image.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$kpkg" ]; then
  apt-get update -qq >/dev/null 2>&1 || true
  kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$kpkg" ] || { log "cannot resolve linux-image-amd64"; exit 1; }
fetch "$kpkg" nbd-client busybox-static libnl-3-200 libnl-genl-3-200

work=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
x=$work/x
mkdir -p "$x"
for p in "$kpkg" nbd-client busybox-static libnl-3-200 libnl-genl-3-200; do
  f=$(ls -1 "$debs/${p}"_*.deb | sort -V | tail -1)
  dpkg-deb -x "$f" "$x"
done

kver=$(ls -1 "$x/lib/modules" | head -1)
cp "$x/boot/vmlinuz-$kver" "$work/vmlinuz"

# The initramfs tree.
r=$work/root
mkdir -p "$r"/{bin,sbin,etc,proc,sys,dev,tmp,mnt,lib/modules,lib64,usr/bin,usr/sbin}
cp "$x/bin/busybox" "$r/bin/busybox"
for a in $("$r/bin/busybox" --list); do
  [ -e "$r/bin/$a" ] || ln -s busybox "$r/bin/$a"
done
cp "$x/sbin/nbd-client" "$r/sbin/nbd-client"
cp "$(command -v mke2fs)" "$r/sbin/mke2fs"
ln -sf mke2fs "$r/sbin/mkfs.ext4"
cp "$(command -v e2fsck)" "$r/sbin/e2fsck"
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$r/etc/"

# Shared libraries by ldd (the unpacked libnl first: the host may lack it).
libpath=$x/lib/x86_64-linux-gnu:$x/usr/lib/x86_64-linux-gnu
for bin in "$r/sbin/nbd-client" "$r/sbin/mke2fs" "$r/sbin/e2fsck"; do
  out=$(LD_LIBRARY_PATH=$libpath ldd "$bin")
  if grep -q 'not found' <<<"$out"; then log "$bin: $out"; exit 1; fi
  for lib in $(awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}' <<<"$out"); do
    dest=$r$(sed "s|^$x||" <<<"$lib")
    mkdir -p "$(dirname "$dest")"
    [ -e "$dest" ] || cp -L "$lib" "$dest"
  done
done
# The loader at the path the binaries name.
[ -e "$r/lib64/ld-linux-x86-64.so.2" ] || cp -L /lib64/ld-linux-x86-64.so.2 "$r/lib64/"

# Kernel modules and their dependencies (read from each module's .modinfo:
# the package carries no modules.dep), in load order.
mdir=$x/lib/modules/$kver
find "$mdir/kernel" -name '*.ko*' >"$work/modlist"
modfile() { # name → path (names use _ where files may use -)
  local n=$1 f
  f=$(awk -v n="$n" '{b=$0; sub(/.*\//,"",b); sub(/\.ko.*$/,"",b); gsub(/-/,"_",b); if (b==n) {print; exit}}' "$work/modlist")
  [ -n "$f" ] || { log "module $n not found"; exit 1; }
  echo "$f"
}
modinfo_field() { # file field
  local f=$1 data
  case $f in
    *.xz) data=$(xz -dc "$f" | tr '\0' '\n') ;;
    *.zst) data=$(zstd -dc "$f" | tr '\0' '\n') ;;
    *) data=$(tr '\0' '\n' <"$f") ;;
  esac
  grep -a "^$2=" <<<"$data" | head -1 | cut -d= -f2-
}
order=()
declare -A seen=()
addmod() {
  local n=${1//-/_} f d
  [ -n "${seen[$n]:-}" ] && return 0
  seen[$n]=1
  f=$(modfile "$n")
  for d in $(modinfo_field "$f" depends | tr ',' ' '); do addmod "$d"; done
  case $f in
    *.xz) xz -dc "$f" >"$r/lib/modules/$n.ko" ;;
    *.zst) zstd -dc "$f" >"$r/lib/modules/$n.ko" ;;
    *) cp "$f" "$r/lib/modules/$n.ko" ;;
  esac
  order+=("$n")
}
# crc32c_generic: ext4/jbd2's soft dependency (crypto-crc32c); TCG's CPU
# has no SSE4.2 for crc32c-intel. virtio_blk: the guest's own disk (/dev/vda)
# when twinbd runs in the guest as a node.
for m in crc32c_generic virtio_pci virtio_net virtio_blk e1000 nbd ext4; do addmod "$m"; done
printf '%s\n' "${order[@]}" >"$r/lib/modules/order"

cat >"$r/init" <<'INIT'
#!/bin/sh
# twinbd e2e guest init (built by scripts/e2e-assets.sh)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /run
echo 0 >/proc/sys/kernel/printk
for m in $(cat /lib/modules/order); do
  insmod /lib/modules/$m.ko 2>/dev/null || echo "init: insmod $m failed"
done
# twinbd.name=value on the kernel command line → TWINBD_NAME=value
for kv in $(cat /proc/cmdline); do
  case $kv in
    twinbd.*=*) k=${kv%%=*}; k=$(echo "${k#twinbd.}" | tr a-z A-Z); export "TWINBD_$k=${kv#*=}" ;;
  esac
done
ip link set lo up
i=0
while ! ip link show eth0 >/dev/null 2>&1 && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "TWINBD-E2E-BOOTED $(cut -d' ' -f1 /proc/uptime)"
rc=0
if [ -x /scenario.sh ]; then
  /scenario.sh || rc=$?
else
  echo "init: no /scenario.sh"; rc=127
fi
echo "TWINBD-E2E-EXIT $rc"
sync
poweroff -f
INIT
chmod +x "$r/init"

(cd "$r" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initramfs.cpio.gz"
mv "$work/vmlinuz" "$CACHE/vmlinuz"
mv "$work/initramfs.cpio.gz" "$CACHE/initramfs.cpio.gz"
echo "$kver" >"$CACHE/kernel-version"
echo "$stamp" >"$CACHE/stamp"
log "built $CACHE (kernel $kver, modules: ${order[*]})"
echo "$CACHE"
