#!/usr/bin/env bash
# Prepares what the QEMU harness (agent/tests/qemu.rs) boots, under target/vm/, from Debian's
# package registry only. Safe to run again: a rerun with everything in place does nothing.
#
#   target/vm/qemu/        qemu-system-x86_64 7.2 + SeaBIOS/iPXE ROMs, extracted from the debs
#                          (run with -L target/vm/qemu/usr/share/seabios -L …/usr/share/qemu)
#   target/vm/kernel/      vmlinuz, modules/*.ko (the CD-ROM + iso9660 + loop stack only),
#                          modules/order (insmod order, dependencies first), VERSION
#   target/vm/busybox      busybox-static, the guest's only userland
#   target/vm/debs/        the downloaded .deb files (the cache that makes reruns fast)
#
# Why not `apt-get install qemu-system-x86`: on this machine kind it removes the preinstalled
# qemu-utils 10.x (qemu-system-common 7.2 Breaks it). So the QEMU debs are only downloaded and
# unpacked with `dpkg -x`; only their shared libraries are installed with apt. KVM is not used
# (the harness runs TCG): /dev/kvm exists on these machines but cannot run a guest.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VM=${CKS_VM_DIR:-$ROOT/target/vm}
DEBS=$VM/debs
QEMU_DEBS=(qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu)
# Shared libraries qemu-system-x86_64 links that a minimal Debian 12 lacks (the rest of its
# Depends are there already); checked with ldd below.
QEMU_LIBS=(libcapstone4 libfdt1 libpmem1 librdmacm1 libibverbs1 libslirp0 libvdeplug2
  libaio1 libbpf1 libfuse3-3 libglib2.0-0 libnuma1 libpixman-1-0 liburing2 libjpeg62-turbo
  libpng16-16 libsasl2-2 libseccomp2 libgnutls30)
# Kernel modules the guest loads: the IDE CD-ROM stack, iso9660, loop (platform notes 7e).
# Their dependencies are added and ordered from each module's `depends=` field.
MODULES=(ata_piix sr_mod isofs loop)

log() { echo "vm-assets: $*" >&2; }

need_root() {
  if [[ $(id -u) -ne 0 ]]; then
    log "need root to $*"
    exit 1
  fi
}

# apt-get download into $DEBS, with one `apt-get update` retry (the lists may be missing or old).
download() {
  mkdir -p "$DEBS"
  local missing=()
  for pkg in "$@"; do
    compgen -G "$DEBS/${pkg}_*.deb" >/dev/null || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  log "downloading ${missing[*]}"
  if ! (cd "$DEBS" && apt-get download -qq "${missing[@]}" 2>/dev/null); then
    need_root "apt-get update"
    apt-get update -qq
    (cd "$DEBS" && apt-get download -qq "${missing[@]}")
  fi
}

deb_of() { compgen -G "$DEBS/${1}_*.deb" | sort | tail -n1; }

# --- QEMU -------------------------------------------------------------------------------------
QEMU_BIN=$VM/qemu/usr/bin/qemu-system-x86_64
if [[ ! -x $QEMU_BIN ]]; then
  download "${QEMU_DEBS[@]}"
  rm -rf "$VM/qemu.tmp"
  for pkg in "${QEMU_DEBS[@]}"; do
    dpkg -x "$(deb_of "$pkg")" "$VM/qemu.tmp"
  done
  rm -rf "$VM/qemu"
  mv "$VM/qemu.tmp" "$VM/qemu"
fi
# (ldd's output is captured first: `ldd | grep -q` can fail on SIGPIPE under pipefail.)
if [[ $(ldd "$QEMU_BIN") == *'not found'* ]]; then
  need_root "apt-get install the libraries qemu-system-x86_64 needs"
  log "installing QEMU's shared libraries"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${QEMU_LIBS[@]}" >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${QEMU_LIBS[@]}" >/dev/null; }
fi
if [[ $(ldd "$QEMU_BIN") == *'not found'* ]]; then
  ldd "$QEMU_BIN" | grep 'not found' >&2 || true
  log "qemu-system-x86_64 still misses the libraries above; add their packages to QEMU_LIBS"
  exit 1
fi

# --- busybox ----------------------------------------------------------------------------------
if [[ ! -x $VM/busybox ]]; then
  download busybox-static
  rm -rf "$VM/busybox.tmp"
  dpkg -x "$(deb_of busybox-static)" "$VM/busybox.tmp"
  install -m 0755 "$VM/busybox.tmp/bin/busybox" "$VM/busybox"
  rm -rf "$VM/busybox.tmp"
fi

# --- kernel + modules -------------------------------------------------------------------------
# The kernel linux-image-amd64 points at (the newest in the configured repos).
kernel_package() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1
}
KPKG=$(kernel_package)
if [[ -z $KPKG ]]; then
  need_root "apt-get update"
  apt-get update -qq
  KPKG=$(kernel_package)
fi
if [[ -z $KPKG ]]; then
  log "cannot resolve linux-image-amd64 to a kernel package"
  exit 1
fi
KDIR=$VM/kernel
if [[ $(cat "$KDIR/VERSION" 2>/dev/null) != "$KPKG" ]]; then
  download "$KPKG"
  log "unpacking $KPKG (vmlinuz and ${MODULES[*]} with their dependencies)"
  X=$VM/kernel.tmp
  rm -rf "$X" "$KDIR"
  dpkg -x "$(deb_of "$KPKG")" "$X"
  mkdir -p "$KDIR/modules"
  cp "$X"/boot/vmlinuz-* "$KDIR/vmlinuz"
  MODROOT=$(echo "$X"/lib/modules/*)
  declare -A seen=()
  order=()
  # Depth-first: a module goes in after everything it depends on.
  add_module() {
    local name=$1 file deps dep
    [[ -n ${seen[$name]:-} ]] && return 0
    seen[$name]=1
    file=$(find "$MODROOT" -name "$name.ko" -o -name "$name.ko.xz" -o -name "$name.ko.zst" |
      head -n1)
    if [[ -z $file ]]; then
      # Built in (listed in modules.builtin, with - or _ in the name): nothing to load.
      if grep -Eq "/${name//_/[-_]}\.ko$" "$MODROOT/modules.builtin"; then
        return 0
      fi
      log "module $name is neither in $KPKG nor built in"
      exit 1
    fi
    case $file in
      *.xz) xz -dc "$file" >"$KDIR/modules/$name.ko" ;;
      *.zst) zstd -qdc "$file" >"$KDIR/modules/$name.ko" ;;
      *) cp "$file" "$KDIR/modules/$name.ko" ;;
    esac
    deps=$(grep -a -m1 -o '^depends=[^[:cntrl:]]*' <(tr '\0' '\n' <"$KDIR/modules/$name.ko") |
      cut -d= -f2)
    for dep in ${deps//,/ }; do
      add_module "$dep"
    done
    order+=("$name")
  }
  for m in "${MODULES[@]}"; do
    add_module "$m"
  done
  printf '%s\n' "${order[@]}" >"$KDIR/modules/order"
  echo "$KPKG" >"$KDIR/VERSION"
  rm -rf "$X"
  # Older kernels' debs are not needed any more.
  find "$DEBS" -name 'linux-image-*.deb' ! -name "${KPKG}_*" -delete
fi

log "ready: $("$QEMU_BIN" --version | head -n1), $(cat "$KDIR/VERSION"), modules: $(tr '\n' ' ' <"$KDIR/modules/order")"
