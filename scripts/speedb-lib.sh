#!/usr/bin/env bash
# Builds Speedb's C++ library once per machine, into a cache outside the clone, and prints the
# shell lines that make every cargo build link it instead of compiling it again (one compile
# takes 7 to 12 minutes on two cores, and cargo would repeat it for each profile, for clippy
# and for rustdoc). The library comes from the same crate the workspace depends on
# (libspeedb-sys, the version and features of Cargo.lock's), built by that crate's own build
# script in release mode without debug information.
#
#   eval "$(./scripts/speedb-lib.sh)"
#
# Without these variables cargo builds the library itself, which is what an application that
# depends on corestream from elsewhere does.
set -euo pipefail
version="0.0.5"
cache="${CORESTREAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/corestream}/libspeedb-$version"
# libspeedb-sys links the prebuilt library under the name RocksDB uses.
lib="$cache/librocksdb.a"
if [ ! -s "$lib" ]; then
    work="$cache/build"
    mkdir -p "$work/src"
    cat >"$work/Cargo.toml" <<TOML
[package]
name = "corestream-speedb-lib"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
libspeedb-sys = { version = "=$version", features = ["lz4"] }

[profile.release]
debug = false
TOML
    echo 'fn main() {}' >"$work/src/main.rs"
    echo "building Speedb $version's C++ library once into $cache (about 7 minutes on 2 idle cores)" >&2
    env -u ROCKSDB_LIB_DIR -u ROCKSDB_STATIC CARGO_TARGET_DIR="$work/target" \
        cargo build --release --quiet --manifest-path "$work/Cargo.toml" >&2
    built=$(find "$work/target/release/build" -name libspeedb.a -print -quit)
    if [ -z "$built" ]; then
        echo "error: the Speedb build finished without producing libspeedb.a (see $work)" >&2
        exit 1
    fi
    cp "$built" "$lib.partial"
    mv "$lib.partial" "$lib"
    rm -rf "$work/target"
fi
printf 'export ROCKSDB_LIB_DIR=%q\nexport ROCKSDB_STATIC=1\n' "$cache"
