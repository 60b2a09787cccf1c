#!/usr/bin/env bash
# Installs what `make test`, `make demo` and `make bench` need on a Debian machine, only when
# missing. Safe to run again: it does nothing when everything is there.
# `install-deps.sh fuzz` installs only what `make fuzz` adds: cargo-fuzz (from crates.io) and a
# C++ compiler for libFuzzer.
set -euo pipefail

if [[ ${1:-} == fuzz ]]; then
  if ! command -v c++ >/dev/null 2>&1; then
    if [[ $(id -u) -ne 0 ]]; then
      echo "install-deps: need root to apt-get install g++ (libFuzzer is C++)" >&2
      exit 1
    fi
    echo "install-deps: installing g++" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends g++ >/dev/null
  fi
  # cargo-fuzz 0.13 builds targets on stable Rust with --sanitizer none.
  if ! cargo fuzz --version 2>/dev/null | grep -q '^cargo-fuzz 0\.13\.'; then
    echo "install-deps: installing cargo-fuzz 0.13.2" >&2
    cargo install cargo-fuzz --locked --version 0.13.2
  fi
  exit 0
fi

# command → Debian package providing it
declare -A NEED=(
  [xorriso]=xorriso
  [containerd]=containerd
  [ctr]=containerd
  [runc]=runc
  [skopeo]=skopeo
  [docker-registry]=docker-registry
  [bsdtar]=libarchive-tools
  [mksquashfs]=squashfs-tools
  [busybox]=busybox-static
  [cpio]=cpio
  [mkfs.ext4]=e2fsprogs
  [losetup]=mount
  [x86_64-linux-musl-gcc]=musl-tools  # the static cks-agent for the QEMU harness (make agent-static)
  [ip]=iproute2  # cloudsim's node network namespaces, bridges and veths
  [kubectl]=kubernetes-client  # drives kubesim's API server; only when no kubectl is installed
  [ssh-keygen]=openssh-client  # cloudsim's test that ssh-keygen reads the keys it makes
)
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "install-deps: installing ${missing[*]}" >&2
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: need root to apt-get install ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Python `cs` CloudStack client, in a venv of our own (used by API tests).
VENV=${CKS_VENV:-$(dirname "$0")/../target/venv}
if [[ ! -x $VENV/bin/cs ]]; then
  echo "install-deps: creating $VENV with the cs client" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q cs
fi

# The QEMU harness's guest: QEMU (unpacked, never apt-installed), a Debian kernel and its CD-ROM
# modules, busybox-static; cached under target/vm/.
"$(dirname "$0")/vm-assets.sh"
