#!/usr/bin/env bash
# bench/bench_infer.sh -- inference benchmark: time to first token, inter-token latency (p50/p95)
# and aggregate tokens/s at 1, 8 and 32 concurrent sessions on the CPU with the base config,
# (a) through dragond's HTTP API (SSE streams on sessions), (b) through the engine's scheduler
# directly (engine/gen.h, no HTTP), and (c) the raw batched decode step (`dragond bench decode`).
# Appends a dated section to bench/RESULTS.md.
#
# Usage: bash bench/bench_infer.sh [BUILD]   (needs BUILD/dragond and BUILD/bench/bench_infer)
# Environment: DG_BENCH_DATA (default ../shared/data/tinyshakespeare.txt), DG_BENCH_TOKENS
# (tokens per session, default 128), DG_BENCH_PROMPT (prompt tokens, default 32),
# DG_BENCH_REPS (runs per figure, best kept, default 3),
# DG_BENCH_RESULTS (default bench/RESULTS.md).
# The model: base config trained for one step (the weights do not change the cost of a step).
set -u
BUILD=${1:-build}
DATA=${DG_BENCH_DATA:-../shared/data/tinyshakespeare.txt}
N=${DG_BENCH_TOKENS:-128}
REPS=${DG_BENCH_REPS:-3}
P=${DG_BENCH_PROMPT:-32}
OUT=${DG_BENCH_RESULTS:-bench/RESULTS.md}
WORK=$(mktemp -d /tmp/dg-bench-infer-XXXXXX)
[ -f "$DATA" ] || { echo "bench_infer: no data at $DATA (set DG_BENCH_DATA)"; exit 1; }
"$BUILD/dragond" train --config config/models/base.json --data "$DATA" --steps 1 \
    --out "$WORK/run" > "$WORK/train.log" 2>&1 || { tail "$WORK/train.log"; exit 1; }
mkdir -p "$WORK/data/models"
cp "$WORK/run/ckpt/step-1.dck" "$WORK/data/models/base.dck"
DRAGOND_GEN_MAX_BATCH=32 "$BUILD/dragond" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" \
    > "$WORK/daemon.out" 2> "$WORK/daemon.log" &
DPID=$!
for i in $(seq 100); do grep -q listening "$WORK/daemon.out" && break; sleep 0.1; done
URL=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$WORK/daemon.out")
[ -n "$URL" ] || { echo "daemon did not start"; cat "$WORK/daemon.log"; kill $DPID; exit 1; }
# warm-up: load the model
"$BUILD/bench/bench_infer" http --url "$URL" --model base --sessions 1 --tokens 4 \
    --prompt-tokens 4 > /dev/null
# best of REPS runs per figure (highest tokens/s; its latencies are reported): the machine may
# be shared, and the best run is the one least disturbed by others.
best() {
  local out="" best=-1 line t
  for k in $(seq "$REPS"); do
    line=$("$@" 2>/dev/null | tail -1)
    t=$(echo "$line" | python3 -c "import json,sys; print(json.load(sys.stdin)['tokens_per_s'])" 2>/dev/null || echo -1)
    if python3 -c "import sys; sys.exit(0 if $t > $best else 1)"; then best=$t; out=$line; fi
  done
  echo "$out"
}
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
rows=""
for S in 1 8 32; do
  e=$(best "$BUILD/bench/bench_infer" engine --checkpoint "$WORK/data/models/base.dck" \
        --sessions $S --tokens $N --prompt-tokens $P)
  h=$(best "$BUILD/bench/bench_infer" http --url "$URL" --model base --sessions $S --tokens $N \
        --prompt-tokens $P)
  r=$(best "$BUILD/dragond" bench decode --config config/models/base.json --sessions $S \
        --tokens $N --prompt-tokens $P)
  echo "S=$S engine: $e"; echo "S=$S http:   $h"; echo "S=$S decode: $r"
  f() { echo "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }
  rows+="| $S | engine (gen.h) | $(f "$e" ttft_ms_p50) / $(f "$e" ttft_ms_p95) | $(f "$e" itl_ms_p50) / $(f "$e" itl_ms_p95) | $(f "$e" tokens_per_s) |"$'\n'
  rows+="| $S | HTTP (SSE) | $(f "$h" ttft_ms_p50) / $(f "$h" ttft_ms_p95) | $(f "$h" itl_ms_p50) / $(f "$h" itl_ms_p95) | $(f "$h" tokens_per_s) |"$'\n'
  rows+="| $S | raw batched step | - | $(f "$r" ms_per_step_wall) | $(f "$r" tokens_per_s_wall) |"$'\n'
  eval "H$S=$(f "$h" tokens_per_s); R$S=$(f "$r" tokens_per_s_wall)"
done
kill -TERM $DPID; wait $DPID
ratio=$(python3 -c "print(f'{$H32/$R32*100:.0f}')")
{
  echo
  echo "## Inference: TTFT, inter-token latency, tokens/s at 1/8/32 sessions ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(uname -sr)."
  echo "Command: \`bash bench/bench_infer.sh $BUILD\` (base config, one training step; $P-token"
  echo "prompt appended per request, $N tokens per session, greedy, ignore_eos; HTTP = dragond"
  echo "sessions API over SSE on 127.0.0.1, one connection and one client thread per session, the"
  echo "client on the same machine; best of $REPS runs per row; load average before the run:"
  echo "$LOAD0). Aggregate tokens/s = all tokens / (first submit .. last token), prefill included"
  echo "for engine and HTTP; the raw batched step (\`dragond bench decode\`) excludes prefill."
  echo
  echo "| sessions | path | TTFT ms p50 / p95 | inter-token ms p50 / p95 | aggregate tokens/s |"
  echo "|---|---|---|---|---|"
  printf "%s" "$rows"
  echo
  echo "At 32 sessions the HTTP aggregate is ${ratio}% of the raw batched decode rate (target >= 80%)."
} >> "$OUT"
echo "appended to $OUT (HTTP at 32 sessions = ${ratio}% of batched decode)"
rm -rf "$WORK"
