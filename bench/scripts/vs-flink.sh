#!/usr/bin/env bash
# corestream against Apache Flink 2.3 on this machine, side by side: each workload runs on one
# engine, then on the other (the order flips every pair), one process at a time; prints every
# run, and per workload and parallelism the median ratio corestream / Flink with the spread of
# the pairs. Nexmark queries compare events per CPU-second (both sides count the process's CPU
# time over the job); `window` (the keyed tumbling-window benchmark, 10 k keys, 10 s windows)
# compares events per second, since Flink's anchor reports no CPU time for it.
#
#   bench/scripts/vs-flink.sh [PAIRS] [WORKLOADS] [PARALLELISMS]
#   bench/scripts/vs-flink.sh 5 "q0:20M q5:10M window:20M" "1 2"
#
# Defaults: 3 pairs of q0 q1 q2 (20M events), q5 q7 q8 (10M) and window (20M), at p=1 and 2.
# Flink runs through ../shared/anchors/flink (FLINK_ANCHOR overrides the directory; it needs
# Java 17 and PyPI, and caches Flink's jars on first use). Needs target/release/corestream
# (CORESTREAM overrides it). Not part of the test suite: it takes minutes per pair.
set -euo pipefail
cd "$(dirname "$0")/../.."
pairs=${1:-3}
workloads=${2:-"q0:20M q1:20M q2:20M q5:10M q7:10M q8:10M window:20M"}
parallelisms=${3:-"1 2"}
anchor=${FLINK_ANCHOR:-../shared/anchors/flink}
cs=${CORESTREAM:-./target/release/corestream}
[[ "$pairs" =~ ^[1-9][0-9]?$ ]] || { echo "error: PAIRS must be 1 to 99, got '$pairs'" >&2; exit 2; }
[ -x "$cs" ] || { echo "error: $cs is missing: cargo build --release -p corestream-tools" >&2; exit 2; }
[ -x "$anchor/nexmark.sh" ] || { echo "error: no Flink anchor in $anchor (set FLINK_ANCHOR)" >&2; exit 2; }
for w in $workloads; do
    [[ "$w" =~ ^(q[0-9]+|window):[0-9.]+[kMG]?$ ]] || { echo "error: workload '$w' is not QUERY:EVENTS or window:EVENTS" >&2; exit 2; }
done
"$anchor/nexmark.sh" setup >&2
"$anchor/run.sh" setup >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# A count as an integer (20M -> 20000000), as Flink's anchor programs take it.
count() { python3 -c 'import sys; s = sys.argv[1]; m = {"k": 10**3, "M": 10**6, "G": 10**9}; print(int(float(s[:-1]) * m[s[-1]]) if s[-1] in m else int(float(s)))' "$1"; }

# One run: appends "engine workload p rate" to the log, rate in events per CPU-second
# (Nexmark) or per second (window).
run() {
    local engine=$1 q=$2 n=$3 p=$4 line rate
    case "$engine/$q" in
        corestream/window)
            line=$("$cs" bench window --events "$n" --keys 10000 --window tumbling:10s -p "$p" | grep '^window: parallelism') ||
                { echo "error: corestream's window run failed" >&2; exit 1; }
            rate=$(sed -nE 's/.* ([0-9]+) events, .*wall ([0-9.]+) s.*/\1 \2/p' <<<"$line" | awk '{ printf "%.0f", $1 / $2 }') ;;
        corestream/*)
            line=$("$cs" bench nexmark --query "$q" --events "$n" -p "$p" | grep "^nexmark $q:") ||
                { echo "error: corestream's $q run failed" >&2; exit 1; }
            rate=$(sed -nE 's/.* ([0-9]+) events, .*cpu ([0-9.]+) s.*/\1 \2/p' <<<"$line" | awk '{ printf "%.0f", $1 / $2 }') ;;
        flink/window)
            line=$("$anchor/run.sh" window "$(count "$n")" "$p") || { echo "error: Flink's window run failed" >&2; exit 1; }
            rate=$(sed -nE 's/.*events_per_s=([0-9.]+).*/\1/p' <<<"$line") ;;
        flink/*)
            line=$("$anchor/nexmark.sh" "$q" "$n" "$p") || { echo "error: Flink's $q run failed" >&2; exit 1; }
            rate=$(sed -nE 's/.*events_per_cpu_s=([0-9.]+).*/\1/p' <<<"$line") ;;
    esac
    [ -n "$rate" ] || { echo "error: no figure in the $engine output: $line" >&2; exit 1; }
    echo "$engine $q $p $rate" >>"$log"
    echo "  $engine: $line"
}

for ((i = 1; i <= pairs; i++)); do
    for w in $workloads; do
        q=${w%%:*} n=${w##*:}
        for p in $parallelisms; do
            echo "pair $i: $q, $n events, p=$p"
            if ((i % 2 == 1)); then run flink "$q" "$n" "$p"; run corestream "$q" "$n" "$p"
            else run corestream "$q" "$n" "$p"; run flink "$q" "$n" "$p"; fi
        done
    done
done

python3 - "$log" <<'EOF'
import statistics, sys
from collections import defaultdict
runs = defaultdict(lambda: {"flink": [], "corestream": []})
order = []
for line in open(sys.argv[1]):
    engine, q, p, rate = line.split()
    if (q, p) not in runs:
        order.append((q, p))
    runs[(q, p)][engine].append(float(rate))
print("\n| workload | p | unit | Flink (median) | corestream (median) | corestream / Flink, median of pairs | spread of pairs |")
print("|---|---|---|---|---|---|---|")
for q, p in order:
    f, c = runs[(q, p)]["flink"], runs[(q, p)]["corestream"]
    ratios = [cs / fl for cs, fl in zip(c, f)]
    unit = "M events/s" if q == "window" else "M events/CPU-s"
    print(f"| {q} | {p} | {unit} | {statistics.median(f) / 1e6:.2f} | {statistics.median(c) / 1e6:.2f} | "
          f"**{statistics.median(ratios):.2f}×** | {min(ratios):.2f}–{max(ratios):.2f} ({len(ratios)} pairs) |")
EOF
