#!/bin/bash
# The io_uring targets A/B, interleaved: raw epoll, raw io_uring, gaio-core on
# epoll and on io_uring, each fresh per round, 5 rounds; prints one line per
# server and round (medians: see README). Needs `cargo build --release --examples
# -p gaio -p gaio-bench -p xtask` first. Run from anywhere.
# Scenarios: 1 conn x 128 B (p50), 1 conn x 64 KiB (MB/s), 1,000 conns x 128 B
# and 100 conns streaming 128 B (16 in flight): server CPU per 1,000 messages,
# from /proc/PID/stat ticks.
set -u
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}/release
LOAD=$T/xtask
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
for round in 1 2 3 4 5; do
  for srv in "raw-epoll:$T/bench-raw-epoll" "raw-uring:$T/bench-raw-uring" "gaio-epoll:$T/examples/echo --backend epoll" "gaio-uring:$T/examples/echo --backend uring"; do
    name=${srv%%:*}; cmd=${srv#*:}
    $cmd --listen 127.0.0.1:0 > /tmp/ab/srv.out 2>/dev/null &
    pid=$!
    for i in $(seq 50); do grep -q listening /tmp/ab/srv.out && break; sleep 0.05; done
    addr=$(head -1 /tmp/ab/srv.out | awk '{print $3}')
    one=$($LOAD load --addr $addr --conns 1 --msg 128 --secs 2 2>&1 | tail -1)
    big=$($LOAD load --addr $addr --conns 1 --msg 65536 --secs 2 2>&1 | tail -1)
    c0=$(cpu $pid)
    many=$($LOAD load --addr $addr --conns 1000 --msg 128 --secs 2 2>&1 | tail -1)
    c1=$(cpu $pid)
    s0=$(cpu $pid)
    stream=$($LOAD load --addr $addr --conns 100 --msg 128 --depth 16 --secs 2 2>&1 | tail -1)
    s1=$(cpu $pid)
    kill $pid; wait $pid 2>/dev/null
    p50=$(echo "$one" | sed -E 's/.*p50 ([0-9.]+).*/\1/')
    mbs=$(echo "$big" | sed -E 's/.* ([0-9.]+) MB\/s.*/\1/')
    msgs=$(echo "$many" | awk '{print $1}')
    smsgs=$(echo "$stream" | awk '{print $1}')
    echo "$round $name p50=$p50 mbs=$mbs cpu_ms_per_1k=$(awk -v t=$((c1 - c0)) -v m="$msgs" 'BEGIN { printf "%.3f", t * 10 * 1000 / m }') stream_cpu_ms_per_1k=$(awk -v t=$((s1 - s0)) -v m="$smsgs" 'BEGIN { printf "%.3f", t * 10 * 1000 / m }')"
  done
done
