#!/usr/bin/env bash
# run_bench.sh - CPU benchmarks: dragond against the PyTorch peer (bench/peers/dragon_torch.py),
# side by side on this machine, appended as a dated section to bench/RESULTS.md.
#
# What it is: the driver behind `make bench` (called as `bash bench/run_bench.sh BUILD`). It runs,
# alternating peer and ours, (1) base config training B24 T512, (2) paper config training B4 T64,
# (3) base config cached decode at 1 and 8 sessions, (4) the quality comparison: base config, one
# epoch of Tiny Shakespeare with identical batches for both sides (a seeded batch-offset file,
# one line per step, B start offsets per line) and the validation loss on the last 10%, (5) cached
# decode again with the model that run trained (both sides load its weights).
# What it is not: the GPU suite (bench/peers/gpu_peer.py runs on the GPU machine) or a test.
# Thread affinity: runs one benchmark process at a time; each gets 2 threads.
#
# Environment knobs:
#   OPENBLAS_CORETYPE       default SkylakeX on AVX-512 CPUs, else Haswell (unset, Debian's
#                           OpenBLAS picks Prescott on the dev VM). Both sides run under the same
#                           value; it is recorded.
#   DG_BENCH_DATA           text corpus (default ../shared/data/tinyshakespeare.txt)
#   DG_BENCH_CONFIG_DIR     model presets (default config/models)
#   DG_BENCH_TRAIN_STEPS    timed training steps per side (default 3; +1 untimed warm-up)
#   DG_BENCH_DECODE_TOKENS  timed decode tokens per session (default 256; +4 warm-up)
#   DG_BENCH_DECODE_REPEAT  runs per side of each decode row, alternating (default 3); the table
#                           takes the median of each side, the commands list shows every run
#   DG_BENCH_QUALITY        1 (default) runs the one-epoch quality comparison, 0 skips it
#                           (peer: dragon_torch.py eval-epoch; ours: dragond train --steps E
#                           --offsets FILE --seed S, val_loss from its metrics.jsonl)
#   DG_BENCH_TRAIN          1 (default) runs the training rows (1, 2), 0 skips them
#   DG_BENCH_TRAINED        a run directory of the base config (e.g. the ours_run of an earlier
#                           bench, or any `dragond train` run) for the trained-decode rows (5)
#                           when the quality run is skipped; default: the quality run's model
#   DG_BENCH_SEED           seed of the offsets file and of both models (default: config's seed)
#   DG_BENCH_PY             Python with torch (default /usr/bin/python3, Debian's python3-torch)
#   DG_BENCH_RESULTS        output file (default bench/RESULTS.md)
# Exit status: 0 when every run of both sides produced a figure, 1 otherwise (the section is
# written either way, with the failures named).

set -u
BUILD=${1:-build}
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)

PY=${DG_BENCH_PY:-/usr/bin/python3}
PEER="$PY bench/peers/dragon_torch.py"
OURS="$BUILD/dragond"
DATA=${DG_BENCH_DATA:-../shared/data/tinyshakespeare.txt}
CFGDIR=${DG_BENCH_CONFIG_DIR:-config/models}
TSTEPS=${DG_BENCH_TRAIN_STEPS:-3}
DTOK=${DG_BENCH_DECODE_TOKENS:-256}
DREPS=${DG_BENCH_DECODE_REPEAT:-3}
QUALITY=${DG_BENCH_QUALITY:-1}
RESULTS=${DG_BENCH_RESULTS:-bench/RESULTS.md}
THREADS=2
# The same kernel choice dragond makes for itself when unset (server/main.c): AVX-512 -> SkylakeX,
# else Haswell. Exported, so the peer (torch links the same OpenBLAS) runs under it too.
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
    if grep -qw avx512bw /proc/cpuinfo && grep -qw avx512dq /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo; then
        OPENBLAS_CORETYPE=SkylakeX
    else
        OPENBLAS_CORETYPE=Haswell
    fi
fi
export OPENBLAS_CORETYPE
export OPENBLAS_NUM_THREADS=$THREADS
export OMP_NUM_THREADS=$THREADS

WORK=$(mktemp -d /tmp/dg_bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ROWS="$WORK/rows.md"
CMDS="$WORK/cmds.md"
RAW="$WORK/raw.txt"
NOTES="$WORK/notes.md"
: >"$ROWS"; : >"$CMDS"; : >"$RAW"; : >"$NOTES"
FAILED=0

say() { echo "[bench] $*" >&2; }
note() { say "$*"; echo "- $*" >>"$NOTES"; }

if ! "$PY" -c 'import torch' 2>/dev/null; then
    say "PyTorch is missing for $PY: run 'make bench-deps' (Debian python3-torch) first"
    exit 2
fi
TORCH_VER=$("$PY" -c 'import torch; print(torch.__version__)')
BASE="$CFGDIR/base.json"
PAPER="$CFGDIR/paper.json"
for c in "$BASE" "$PAPER"; do
    [ -f "$c" ] || { say "config $c missing (set DG_BENCH_CONFIG_DIR)"; exit 2; }
done
HAVE_DATA=1
if [ ! -f "$DATA" ]; then
    HAVE_DATA=0
    note "data $DATA absent: training and quality benchmarks skipped (decode only)"
fi
HAVE_OURS=1
if [ ! -x "$OURS" ]; then
    HAVE_OURS=0
    FAILED=1
    note "$OURS not built: peer figures only"
fi

# json_field FILE KEY: KEY of the last JSON object line in FILE (empty when absent)
json_field() {
    "$PY" - "$1" "$2" <<'EOF'
import json, sys
val = ""
try:
    for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
        line = line.strip()
        if line.startswith("{"):
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if sys.argv[2] in d:
                val = d[sys.argv[2]]
except OSError:
    pass
print(val)
EOF
}

# run_side NAME CMD...: runs CMD, keeps stdout in $WORK/NAME.out, logs the command
run_side() {
    local name=$1; shift
    local load
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    say "$name: $*"
    printf -- '- `%s` (load before: %s)\n' "$*" "$load" >>"$CMDS"
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
    local rc=$?
    {
        echo "### $name (rc $rc)"
        tail -n 3 "$WORK/$name.out"
        [ $rc -eq 0 ] || tail -n 5 "$WORK/$name.err"
    } >>"$RAW"
    return $rc
}

fmt() {
    if [ -n "$1" ]; then "$PY" -c "import sys; print('%.4g' % float(sys.argv[1]))" "$1"
    else echo "n/a"; fi
}
median() {
    "$PY" -c "import sys, statistics; print(statistics.median(float(a) for a in sys.argv[1:]))" "$@"
}
ratio() {
    if [ -n "$1" ] && [ -n "$2" ]; then
        "$PY" -c "import sys; print('%.2fx' % (float(sys.argv[1]) / float(sys.argv[2])))" "$1" "$2"
    else echo "n/a"; fi
}

# bench_pair LABEL KEY TARGET PEER_CMD -- OURS_CMD ; KEY is the figure compared (tokens_per_s)
bench_pair() {
    local label=$1 key=$2 target=$3; shift 3
    local peer=() ours=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do peer+=("$1"); shift; done
    shift
    ours=("$@")
    local slug
    slug=$(echo "$label" | tr -c 'A-Za-z0-9\n' '_')
    local pv="" ov="" pvs=() ovs=() r v
    for ((r = 1; r <= PAIR_REPS; r++)); do      # alternate the sides; median of each
        v=""
        if run_side "peer_${slug}_$r" "${peer[@]}"; then
            v=$(json_field "$WORK/peer_${slug}_$r.out" "$key")
        fi
        [ -n "$v" ] && pvs+=("$v")
        if [ $HAVE_OURS -eq 1 ]; then
            v=""
            if run_side "ours_${slug}_$r" "${ours[@]}"; then
                v=$(json_field "$WORK/ours_${slug}_$r.out" "$key")
            fi
            [ -n "$v" ] && ovs+=("$v")
        fi
    done
    [ ${#pvs[@]} -eq "$PAIR_REPS" ] && pv=$(median "${pvs[@]}")
    [ -n "$pv" ] || { FAILED=1; note "peer failed for $label (see raw output)"; }
    if [ $HAVE_OURS -eq 1 ]; then
        [ ${#ovs[@]} -eq "$PAIR_REPS" ] && ov=$(median "${ovs[@]}")
        [ -n "$ov" ] || { FAILED=1; note "dragond failed for $label (see raw output)"; }
    fi
    if [ "$PAIR_REPS" -gt 1 ]; then
        printf -- '- %s: peer runs %s; dragond runs %s (medians in the table)\n' "$label" \
            "${pvs[*]:-none}" "${ovs[*]:-none}" >>"$CMDS"
    fi
    printf '| %s | %s | %s | %s | %s |\n' "$label" "$(fmt "$pv")" "$(fmt "$ov")" \
        "$(ratio "$ov" "$pv")" "$target" >>"$ROWS"
}

PAIR_REPS=1
# ---- 1, 2: training ---------------------------------------------------------------------------
if [ "${DG_BENCH_TRAIN:-1}" != "1" ]; then
    note "training rows skipped (DG_BENCH_TRAIN=${DG_BENCH_TRAIN})"
elif [ $HAVE_DATA -eq 1 ]; then
    bench_pair "train base B24 T512 (tok/s)" tokens_per_s ">= 2x" \
        $PEER train --config "$BASE" --data "$DATA" --batch 24 --block 512 --steps "$TSTEPS" \
            --threads $THREADS --json -- \
        "$OURS" bench train --config "$BASE" --data "$DATA" --batch 24 --block 512 \
            --steps "$TSTEPS" --json
    bench_pair "train paper B4 T64 (tok/s)" tokens_per_s "-" \
        $PEER train --config "$PAPER" --data "$DATA" --batch 4 --block 64 --steps "$TSTEPS" \
            --threads $THREADS --json -- \
        "$OURS" bench train --config "$PAPER" --data "$DATA" --batch 4 --block 64 \
            --steps "$TSTEPS" --json
fi

# ---- 3: cached decode ---------------------------------------------------------------------------
# both sides get the same vocabulary: the corpus's char vocabulary (69 for Tiny Shakespeare)
VOCAB=$("$PY" - "$BASE" "$DATA" <<'EOF'
import json, sys
tok = json.load(open(sys.argv[1]))["training"].get("tokenizer", "char")
if tok == "byte":
    print(259)
else:
    try:
        print(4 + len(set(open(sys.argv[2], "rb").read().decode("utf-8"))))
    except OSError:
        print(69)
EOF
)
PAIR_REPS=$DREPS
for S in 1 8; do
    bench_pair "decode base, $S session(s) (tok/s aggregate)" tokens_per_s ">= 10x" \
        $PEER decode --config "$BASE" --vocab "$VOCAB" --sessions "$S" --tokens "$DTOK" \
            --threads $THREADS --json -- \
        "$OURS" bench decode --config "$BASE" --vocab "$VOCAB" --sessions "$S" --tokens "$DTOK" \
            --json
done

# ---- 4: quality, one epoch with identical batches ---------------------------------------------
QROWS="$WORK/qrows.md"
: >"$QROWS"
if [ $HAVE_DATA -eq 1 ] && [ "$QUALITY" = "1" ]; then
    OFFS="$WORK/offsets_base_epoch.txt"
    # offsets: seeded, uniform in [0, n_train - T - 1]; n_train = floor(train_frac * n_tokens)
    QINFO=$("$PY" - "$BASE" "$DATA" "$OFFS" "${DG_BENCH_SEED:-}" <<'EOF'
import json, math, random, sys
cfg = json.load(open(sys.argv[1]))["training"]
B, T = int(cfg.get("batch_size", 24)), int(cfg.get("block_size", 512))
seed = int(sys.argv[4]) if sys.argv[4] else int(cfg.get("seed", 1337))
frac = float(cfg.get("train_frac", 0.9))
raw = open(sys.argv[2], "rb").read()
n = len(raw) if cfg.get("tokenizer", "char") == "byte" else len(raw.decode("utf-8"))
n_train = int(math.floor(frac * n))
steps = int(math.ceil(n_train / (B * T)))
hi = n_train - T - 1
rng = random.Random(seed)
with open(sys.argv[3], "w") as f:
    for _ in range(steps):
        f.write(" ".join(str(rng.randint(0, hi)) for _ in range(B)) + "\n")
print(seed, steps, n_train, B, T)
EOF
)
    read -r QSEED QSTEPS QNTRAIN QB QT <<<"$QINFO"
    note "quality: base config, seed $QSEED, $QSTEPS steps (one epoch of $QNTRAIN train tokens, \
B$QB T$QT), batch offsets from a seeded file ($(sha256sum "$OFFS" | cut -c1-16)); validation \
loss = mean CE over the non-overlapping T-windows of the last 10%, dropout off"
    pv="" ov="" pt="" ot=""
    if run_side peer_quality $PEER eval-epoch --config "$BASE" --data "$DATA" --offsets "$OFFS" \
            --seed "$QSEED" --threads $THREADS --json; then
        pv=$(json_field "$WORK/peer_quality.out" val_loss)
        pt=$(json_field "$WORK/peer_quality.out" final_loss)
    fi
    [ -n "$pv" ] || { FAILED=1; note "peer failed for the quality run"; }
    if [ $HAVE_OURS -eq 1 ]; then
        # `dragond train` evaluates at its last step (same windows as the peer: val[kT:kT+T+1])
        # and logs {"val_loss"} / {"train_loss"} lines to OUT/metrics.jsonl
        if run_side ours_quality "$OURS" train --config "$BASE" --data "$DATA" \
                --steps "$QSTEPS" --offsets "$OFFS" --seed "$QSEED" --out "$WORK/ours_run" \
                --quiet; then
            ov=$(json_field "$WORK/ours_run/metrics.jsonl" val_loss)
            ot=$(json_field "$WORK/ours_run/metrics.jsonl" train_loss)
        fi
        [ -n "$ov" ] || { FAILED=1; note "dragond failed for the quality run"; }
    fi
    printf '| quality: val loss after 1 epoch (%s steps) | %s | %s | %s | close to peer |\n' \
        "$QSTEPS" "$(fmt "$pv")" "$(fmt "$ov")" "$(ratio "$ov" "$pv")" >>"$QROWS"
    printf '| quality: last train-step loss | %s | %s | %s | - |\n' \
        "$(fmt "$pt")" "$(fmt "$ot")" "$(ratio "$ot" "$pt")" >>"$QROWS"
elif [ "$QUALITY" != "1" ]; then
    note "quality comparison skipped (DG_BENCH_QUALITY=$QUALITY)"
fi

# ---- 5: cached decode of the trained model (the quality run's checkpoint) ----------------------
# An initialised model keeps about half of its state rows active (symmetric pre-activations);
# a trained one is sparser, and our decode step reads and writes only the active rows. Both sides
# load the same weights (the peer through `dragond export`'s safetensors file); our prompts are
# windows of the data, the peer starts from one token (its dense step costs the same either way).
RUN5=$WORK/ours_run
WHAT5="the base model after the one-epoch quality run"
if [ -n "${DG_BENCH_TRAINED:-}" ] && [ ! -d "$WORK/ours_run/ckpt" ]; then
    RUN5=$DG_BENCH_TRAINED
    WHAT5="the base model of $RUN5 (DG_BENCH_TRAINED)"
    [ -d "$RUN5/ckpt" ] || { FAILED=1; note "DG_BENCH_TRAINED=$RUN5 has no ckpt/ directory"; }
fi
if [ $HAVE_OURS -eq 1 ] && [ -d "$RUN5/ckpt" ]; then
    if "$OURS" export --checkpoint "$RUN5" --format safetensors \
            --out "$WORK/trained.safetensors" >"$WORK/export.out" 2>&1; then
        note "decode (trained): $WHAT5, loaded by both sides"
        PAIR_REPS=$DREPS
        for S in 1 8; do
            bench_pair "decode base trained 1 epoch, $S session(s) (tok/s aggregate)" tokens_per_s \
                ">= 10x" \
                $PEER decode --config "$BASE" --weights "$WORK/trained.safetensors" \
                    --sessions "$S" --tokens "$DTOK" --threads $THREADS --json -- \
                "$OURS" bench decode --checkpoint "$RUN5" --data "$DATA" \
                    --sessions "$S" --tokens "$DTOK" --json
        done
    else
        FAILED=1
        note "export of the trained model failed: $(tail -n 2 "$WORK/export.out")"
    fi
fi

# ---- write the section ---------------------------------------------------------------------------
CPU=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)
GITREV=$(git rev-parse --short HEAD 2>/dev/null || echo "no git")
DIRTY=$(git status --porcelain 2>/dev/null | head -c1)
[ -n "$DIRTY" ] && GITREV="$GITREV (working tree modified)"
SECTION="$WORK/section.md"
{
    echo
    echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — CPU benchmarks, dragond vs PyTorch peer"
    echo
    echo "- machine: ${CPU:-unknown CPU}, nproc $(nproc), threads $THREADS per side"
    echo "- OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE, peer: PyTorch $TORCH_VER ($PY), ours: $OURS"
    echo "- tree: $GITREV; data: $DATA"
    echo "- timing: warm-up excluded, median of steps (train: $TSTEPS timed steps; decode: $DTOK"
    echo "  timed tokens per session); ratio = ours / peer (for losses: lower is better)"
    echo
    echo "| benchmark | peer | dragond | ratio | target |"
    echo "|---|---|---|---|---|"
    cat "$ROWS" "$QROWS"
    if [ -s "$NOTES" ]; then echo; cat "$NOTES"; fi
    echo
    echo "Commands (in this order):"
    echo
    cat "$CMDS"
    echo
    echo "<details><summary>raw output</summary>"
    echo
    echo '```'
    cat "$RAW"
    echo '```'
    echo "</details>"
} >"$SECTION"
[ -f "$RESULTS" ] ||
    printf '# Benchmark results\n\nSections are appended by bench/run_bench.sh.\n' >"$RESULTS"
cat "$SECTION" >>"$RESULTS"
cat "$SECTION"
say "appended to $RESULTS"
exit $FAILED
