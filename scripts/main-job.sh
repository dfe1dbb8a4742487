#!/usr/bin/env bash
# The main job: an embedded local cluster running word count over a generated corpus, a keyed
# sum and the throughput benchmarks at 1 slot and every slot, each checked against a reference;
# then Nexmark q5 at 1 and 2 slots and the latency of q0 at 100k records/s beside the harness's
# own baseline. Extra arguments go to `corestream demo` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
eval "$(./scripts/speedb-lib.sh)"
cargo build --release --locked -p corestream-tools
cs=./target/release/corestream
"$cs" demo "$@"
for p in 1 2; do
    "$cs" bench nexmark --query q5 --events 20M -p "$p"
done
"$cs" bench latency --query q0 --rate 100k --duration 5s -p 1 --baseline
