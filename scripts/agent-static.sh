#!/usr/bin/env bash
# Builds cks-agent for a guest without glibc (the QEMU harness, agent/tests/qemu.rs) and lays it
# out in target/vm/agent/ with scripts/vm-agent-tree.sh.
#
# Preferred: a static musl binary (release profile, target x86_64-unknown-linux-musl; ring's C
# and assembly need musl-tools' x86_64-linux-musl-gcc). When the target cannot be installed or
# used (no rustup, `rustup target add` refused, no musl-gcc, or the build fails), it falls back
# to the glibc release binary plus the libraries `ldd` lists, which the initramfs carries too.
# CKS_AGENT_NO_MUSL=1 forces the fallback (to test it).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CARGO=${CARGO:-cargo}
TARGET=x86_64-unknown-linux-musl
OUT=${CKS_VM_DIR:-$ROOT/target/vm}/agent

log() { echo "agent-static: $*" >&2; }

musl_usable() {
  if [[ -n ${CKS_AGENT_NO_MUSL:-} ]]; then
    log "CKS_AGENT_NO_MUSL is set"
    return 1
  fi
  if ! command -v x86_64-linux-musl-gcc >/dev/null 2>&1; then
    log "x86_64-linux-musl-gcc not found (Debian package musl-tools)"
    return 1
  fi
  if ! command -v rustup >/dev/null 2>&1; then
    log "rustup not found: cannot check or add the $TARGET target"
    return 1
  fi
  if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    log "adding the $TARGET target"
    # Bounded: where the toolchain server is unreachable, fall back instead of hanging.
    if ! timeout 180 rustup target add "$TARGET" >&2; then
      log "rustup could not add $TARGET"
      return 1
    fi
  fi
}

if musl_usable && $CARGO build --release --target "$TARGET" -p cks-agent; then
  scripts/vm-agent-tree.sh "target/$TARGET/release/cks-agent" "$OUT"
else
  log "falling back to the glibc binary and its libraries"
  $CARGO build --release -p cks-agent
  scripts/vm-agent-tree.sh target/release/cks-agent "$OUT"
fi
