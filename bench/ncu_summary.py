#!/usr/bin/env python3
"""bench/ncu_summary.py CSV -- per-kernel totals from an `ncu --csv` run.

Reads the CSV that `ncu --metrics gpu__time_duration.sum,dram__bytes.sum --csv ...` prints and
writes one line per kernel name (first 60 characters): total and per-call time, calls, and DRAM
bytes over time. Used for the decode breakdowns in bench/RESULTS.md (run on the GPU machine).
"""
import collections
import csv
import sys

SCALE_T = {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6}
SCALE_B = {"byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}


def main(path):
    hdr, rows = None, []
    for r in csv.reader(open(path)):
        if r and r[0] == "ID":
            hdr = r
        elif hdr and len(r) == len(hdr):
            rows.append(dict(zip(hdr, r)))
    t = collections.defaultdict(lambda: [0, 0.0, 0.0])   # calls, ns, bytes
    for d in rows:
        k = d["Kernel Name"][:60]
        v = float(d["Metric Value"].replace(",", ""))
        unit = d.get("Metric Unit", "")
        if d["Metric Name"] == "gpu__time_duration.sum":
            t[k][0] += 1
            t[k][1] += v * SCALE_T.get(unit, 1.0)
        else:
            t[k][2] += v * SCALE_B.get(unit, 1.0)
    tot = sum(x[1] for x in t.values())
    print("kernels %d total us %.1f" % (sum(x[0] for x in t.values()), tot / 1000))
    for k, (n, ns, b) in sorted(t.items(), key=lambda x: -x[1][1]):
        print("%6.1f us %4d calls %7.2f us/call %8.1f GB/s  %s"
              % (ns / 1000, n, ns / 1000 / n, b / ns if ns else 0, k))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: ncu_summary.py NCU_CSV")
    main(sys.argv[1])
