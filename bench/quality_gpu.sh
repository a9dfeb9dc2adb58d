#!/usr/bin/env bash
# bench/quality_gpu.sh -- the issue-6 quality run: the paper config trained on Tiny Shakespeare
# (byte level, last 10% held out) for a wall-clock budget on one GPU, printing the validation
# curve (loss against seconds since the command started) and when it first reached the target.
#
#   bench/quality_gpu.sh [CONFIG] [OUTDIR]
#     CONFIG   default config/models/paper-5min.json
#     OUTDIR   default bench/out/quality-<date>-<time>
#   env: DG_DATA (default ../shared/data/tinyshakespeare.txt), DG_BIN (default build/dragond),
#        DG_DEVICE (GPU index, default 0), DG_BACKEND (default cuda), DG_LIMIT (seconds, default
#        300), DG_TARGET (val loss, default 1.45), DG_SEED (default: the config's seed)
#
# The curve is read back from OUTDIR/metrics.jsonl ("elapsed" = seconds since dragond started,
# data loading, model set-up and every evaluation included).
set -u
cfg=${1:-config/models/paper-5min.json}
out=${2:-bench/out/quality-$(date -u +%Y%m%d-%H%M%S)}
data=${DG_DATA:-../shared/data/tinyshakespeare.txt}
bin=${DG_BIN:-build/dragond}
limit=${DG_LIMIT:-300}
target=${DG_TARGET:-1.45}
if [ ! -f "$data" ]; then
    echo "quality_gpu: $data not found (set DG_DATA); skipped"
    exit 0
fi
[ -x "$bin" ] || { echo "quality_gpu: $bin not built (make, or set DG_BIN)" >&2; exit 2; }
rm -rf "$out"
mkdir -p "$(dirname "$out")"
seedarg=()
[ -n "${DG_SEED:-}" ] && seedarg=(--seed "$DG_SEED")
echo "quality_gpu: $bin train --backend ${DG_BACKEND:-cuda} --device ${DG_DEVICE:-0} --config $cfg" \
     "--data $data --time-limit $limit --out $out ${seedarg[*]}"
"$bin" train --backend "${DG_BACKEND:-cuda}" --device "${DG_DEVICE:-0}" --config "$cfg" \
    --data "$data" --time-limit "$limit" --out "$out" "${seedarg[@]}" > "$out.log" 2>&1
rc=$?
tail -3 "$out.log"
python3 - "$out/metrics.jsonl" "$target" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
target = float(sys.argv[2])
val = [r for r in rows if "val_loss" in r]
train = {r["step"]: r for r in rows if "train_loss" in r}
print("| elapsed s | step | tokens seen | train loss | val loss |")
print("|---|---|---|---|---|")
for r in val:
    t = train.get(r["step"], {})
    print("| %.1f | %d | %s | %s | %.4f |" % (r["elapsed"], r["step"], t.get("tokens_seen", ""),
          "%.4f" % t["train_loss"] if "train_loss" in t else "", r["val_loss"]))
best = min(val, key=lambda r: r["val_loss"]) if val else None
hit = next((r for r in val if r["val_loss"] <= target), None)
if best:
    print("best val_loss %.4f at step %d, %.1f s; final %.4f at step %d, %.1f s"
          % (best["val_loss"], best["step"], best["elapsed"], val[-1]["val_loss"], val[-1]["step"],
             val[-1]["elapsed"]))
print("target %.2f: %s" % (target, "reached at %.1f s (step %d)" % (hit["elapsed"], hit["step"])
                          if hit else "NOT reached"))
PY
exit $rc
