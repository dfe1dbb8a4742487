#!/usr/bin/env bash
# The main job: an embedded local cluster running word count over a generated corpus, a keyed
# sum and the throughput benchmarks at 1 slot and every slot, each checked against a reference.
# Extra arguments go to `corestream demo` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked -p corestream-tools
exec ./target/release/corestream demo "$@"
