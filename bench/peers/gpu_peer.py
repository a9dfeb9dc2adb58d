#!/usr/bin/env python3
"""gpu_peer.py - the GPU benchmark suite of the PyTorch peer (bench/peers/dragon_torch.py).

What it is: a driver that runs, in one process on one card, the peer rows PERF.md asks for:
  1. paper config B32 T512 training, bf16 autocast, eager
  2. the same under torch.compile
  3. base config B24 T512 training, bf16 autocast, torch.compile
  4. paper config cached decode, bf16 model + state, captured in a CUDA graph, 1 and 64 sessions
  (+ with --extra: paper decode eager fp32 at 1 and 64 sessions)
Timing: warm-up (and compile) excluded, CUDA events per step, median; peak = max allocated.
Prints one JSON line per row and a Markdown table at the end (stdout); --out FILE also writes
the rows as a JSON array.
What it is not: our engine's benchmark (dragond bench does that) or a correctness test
(dragon_torch.py selftest is).
Thread affinity: single Python thread, one CUDA stream (plus the capture side stream).

`--device cpu --smoke` runs every row on the CPU with tiny shapes and step counts (checks that the
script works; no figures). Needs PyTorch >= 2 for the compiled rows; on 1.13 they are reported
as skipped.
"""

import argparse
import gc
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import dragon_torch as dt  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))


def find_config(name, override):
    if override:
        return override
    return os.path.join(REPO, "config", "models", name + ".json")


def run_row(label, argv, fn):
    args = dt.build_parser().parse_args(argv)
    if getattr(args, "cmd", None) == "train" and args.warmup < 1:
        args.warmup = 1
    try:
        res = fn(args, out=False)
        res["row"] = label
        res["argv"] = " ".join(argv)
    except Exception as e:  # one failing row (OOM, compile error) must not lose the others
        res = {"row": label, "argv": " ".join(argv), "error": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(res), flush=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if dt.HAS_COMPILE:
        try:
            torch._dynamo.reset()
        except Exception:
            pass
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes/steps (CPU path check)")
    ap.add_argument("--paper-config", default=None)
    ap.add_argument("--base-config", default=None)
    ap.add_argument("--data", default=None,
                    help="text file (default ../shared/data/tinyshakespeare.txt if present; "
                         "else synthetic tokens, speed is data-independent)")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per row")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps (compile included)")
    ap.add_argument("--decode-tokens", type=int, default=200)
    ap.add_argument("--extra", action="store_true", help="also eager fp32 decode rows")
    ap.add_argument("--only", default=None, help="comma list of row labels to run")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    paper = find_config("paper", a.paper_config)
    base = find_config("base", a.base_config)
    for p in (paper, base):
        if not os.path.exists(p):
            sys.exit("config %s missing (give --paper-config/--base-config)" % p)
    data = a.data
    if data is None:
        cand = os.path.join(os.path.dirname(REPO), "shared", "data", "tinyshakespeare.txt")
        data = cand if os.path.exists(cand) else None
    dflag = ["--data", data] if data else []
    dev = ["--device", a.device]
    steps, warm, ntok = a.steps, a.warmup, a.decode_tokens
    pB, pT, bB, bT, big_s = 32, 512, 24, 512, 64
    if a.smoke:
        steps, warm, ntok = 2, 1, 3
        pB, pT, bB, bT, big_s = 2, 64, 2, 64, 4
    if a.device == "cpu":
        dev += ["--threads", str(os.environ.get("DG_THREADS", "2"))]
    tr = ["--steps", str(steps), "--warmup", str(warm), "--bf16", "--json"]
    rows = [
        ("paper_train_eager_bf16", "train",
         ["train", "--config", paper, "--batch", str(pB), "--block", str(pT)] + dflag + dev + tr),
        ("paper_train_compile_bf16", "train",
         ["train", "--config", paper, "--batch", str(pB), "--block", str(pT), "--compile"]
         + dflag + dev + tr),
        ("base_train_compile_bf16", "train",
         ["train", "--config", base, "--batch", str(bB), "--block", str(bT), "--compile"]
         + dflag + dev + tr),
    ]
    graph = ["--cuda-graph"] if a.device == "cuda" else []
    for s in (1, big_s):
        rows.append(("paper_decode_bf16_graph_s%d" % s, "decode",
                     ["decode", "--config", paper, "--sessions", str(s), "--tokens", str(ntok),
                      "--bf16", "--json"] + graph + dflag + dev))
    if a.extra:
        for s in (1, big_s):
            rows.append(("paper_decode_fp32_eager_s%d" % s, "decode",
                         ["decode", "--config", paper, "--sessions", str(s), "--tokens",
                          str(ntok), "--json"] + dflag + dev))
    only = set(a.only.split(",")) if a.only else None
    results = []
    for label, kind, argv in rows:
        if only and label not in only:
            continue
        if "--compile" in argv and not dt.HAS_COMPILE:
            r = {"row": label, "skipped": "torch.compile needs PyTorch >= 2 (have %s)"
                 % torch.__version__}
            print(json.dumps(r), flush=True)
            results.append(r)
            continue
        fn = dt.run_train if kind == "train" else dt.run_decode
        results.append(run_row(label, argv, fn))

    print("\n| row | device | tokens/s | ms/step | peak GiB | extra |")
    print("|---|---|---|---|---|---|")
    for r in results:
        if "tokens_per_s" in r:
            ms = r.get("ms_per_step", r.get("ms_per_token_step"))
            extra = ("first step %.1f s" % r["first_step_s"]) if "first_step_s" in r else \
                "state %.0f MiB/session" % r.get("state_mib_per_session", 0)
            print("| %s | %s | %.4g | %.3f | %.2f | %s |" % (
                r["row"], r.get("device_name", r.get("device")), r["tokens_per_s"], ms,
                r["peak_mem_gib"], extra))
        else:
            print("| %s | | | | | %s |" % (r["row"], r.get("error", r.get("skipped"))))
    print("torch %s" % torch.__version__)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
