#!/usr/bin/env bash
# Side by side on one machine: the same jobs on a session cluster (a JobManager and two
# TaskManager processes of one slot each, pinned to cores 0 and 1) and in local mode (one
# process, two slots), alternating, ROUNDS rounds; prints each run's job time and the median
# ratio cluster/local. Also the time from `submit` to all tasks running, from the JobManager's
# own clock (tiny jobs, so the start is what is measured).
#
#   bench/scripts/cluster-vs-local.sh [ROUNDS] [Q5_EVENTS] [SUM_RECORDS]
#
# Needs `target/release/corestream` (`cargo build --release -p corestream-tools`).
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}
q5_events=${2:-20M}
sum_records=${3:-50M}
cs=./target/release/corestream
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

export CORESTREAM_CONF_SECURITY_CLUSTER_SECRET="bench-$RANDOM-$RANDOM-$RANDOM"
export CORESTREAM_LOG=warn
"$cs" jobmanager -D rest.port=0 -D jobmanager.rpc.port=0 >"$work/jm.out" 2>"$work/jm.err" &
pids+=($!)
for _ in $(seq 100); do grep -q "REST API on" "$work/jm.out" 2>/dev/null && break; sleep 0.1; done
line=$(head -n1 "$work/jm.out")
rpc=$(sed -E 's/.*connect to ([^;]+);.*/\1/' <<<"$line")
url=$(sed -E 's/.*REST API on (.*)$/\1/' <<<"$line")
for tm in 0 1; do
    "$cs" taskmanager --jobmanager "$rpc" --slots 1 --core-offset "$tm" >"$work/tm$tm.out" 2>"$work/tm$tm.err" &
    pids+=($!)
done
# The first submission waits for both TaskManagers' slots (slot.request.timeout).

# Milliseconds of a job: "Job ID FINISHED in 1.234 s" (cluster) or the wall line of a local run.
job_ms() { sed -nE 's/^Job [0-9a-f]+ FINISHED in ([0-9.]+) (ms|s)$/\1 \2/p' | awk '{ print ($2 == "s") ? $1 * 1000 : $1 }'; }
now_ms() { date +%s%3N; }
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

run_pair() { # name, local command..., -- cluster args...
    local name=$1; shift
    local local_cmd=() cluster_args=()
    while [ "$1" != "--" ]; do local_cmd+=("$1"); shift; done; shift
    cluster_args=("$@")
    : >"$work/$name.local"; : >"$work/$name.cluster"; : >"$work/$name.ratio"
    for r in $(seq "$rounds"); do
        local t0 t1 l c
        t0=$(now_ms); "$cs" "${local_cmd[@]}" >/dev/null; t1=$(now_ms); l=$((t1 - t0))
        t0=$(now_ms); "$cs" submit --jobmanager "$url" -p 2 "${cluster_args[@]}" >"$work/out" 2>/dev/null; t1=$(now_ms); c=$((t1 - t0))
        echo "$l" >>"$work/$name.local"; echo "$c" >>"$work/$name.cluster"
        awk -v c="$c" -v l="$l" 'BEGIN { printf "%.3f\n", c / l }' >>"$work/$name.ratio"
        echo "$name round $r: local ${l} ms, cluster ${c} ms (job $(job_ms <"$work/out") ms on the JobManager's clock)"
    done
    echo "$name: median local $(median <"$work/$name.local") ms, cluster $(median <"$work/$name.cluster") ms, ratio cluster/local $(median <"$work/$name.ratio") (min $(sort -n "$work/$name.ratio" | head -1), max $(sort -n "$work/$name.ratio" | tail -1)), whole commands"
}

run_pair q5 bench nexmark --query q5 --events "$q5_events" -p 2 --checksum -- nexmark --query q5 --events "$q5_events"
run_pair sum run sum-by-key --records "$sum_records" --keys 10k -p 2 -- sum-by-key --records "$sum_records" --keys 10k

: >"$work/start"
for _ in $(seq $((rounds * 4))); do
    "$cs" submit --jobmanager "$url" -p 2 sum-by-key --records 2 --keys 2 >"$work/out" 2>/dev/null
    sed -nE 's/^All tasks running after ([0-9.]+) ms$/\1/p' "$work/out" >>"$work/start"
done
echo "submit to all tasks running: median $(median <"$work/start") ms over $(wc -l <"$work/start") jobs (min $(sort -n "$work/start" | head -1), max $(sort -n "$work/start" | tail -1))"
