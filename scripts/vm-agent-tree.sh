#!/usr/bin/env bash
# Usage: vm-agent-tree.sh BINARY OUTDIR
#
# Lays out cks-agent for a guest that has no libc of its own (the QEMU harness's busybox
# initramfs): OUTDIR/bin/cks-agent, stripped, plus, when BINARY is dynamically linked, every
# library `ldd` resolves (and the ELF interpreter) at its absolute path under OUTDIR.
# OUTDIR/KIND says `static` or `glibc`. OUTDIR is replaced atomically.
set -euo pipefail

BIN=$1
OUT=$2
[[ -x $BIN ]] || { echo "vm-agent-tree: $BIN is not an executable" >&2; exit 1; }
TMP=$OUT.tmp.$$
rm -rf "$TMP"
mkdir -p "$TMP/bin"
# Debug info is most of a Rust binary; the guest only runs it.
strip -o "$TMP/bin/cks-agent" "$BIN"
# A static binary: ldd fails ("not a dynamic executable") or, for static-pie, says so.
if deps=$(ldd "$BIN" 2>&1) && [[ $deps != *'statically linked'* ]]; then
  kind=glibc
  # Lines look like `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or
  # `/lib64/ld-linux-x86-64.so.2 (0x…)`; linux-vdso has no file.
  grep -o '/[^ ]*' <<<"$deps" | while read -r lib; do
    mkdir -p "$TMP$(dirname "$lib")"
    cp -L "$lib" "$TMP$lib"
  done
else
  kind=static
fi
echo "$kind" >"$TMP/KIND"
rm -rf "$OUT"
mv "$TMP" "$OUT"
echo "vm-agent-tree: $OUT: $kind cks-agent, $(stat -c %s "$OUT/bin/cks-agent") bytes stripped ($(stat -c %s "$BIN") before)" >&2
