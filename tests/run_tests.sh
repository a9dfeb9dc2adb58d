#!/usr/bin/env bash
# tests/run_tests.sh BUILD BIN... -- runs every Check test program, prints each one's result and
# a closing "N passed, N failed" line (counted in Check test cases). Exit 1 if anything failed.
set -u
build=$1; shift
export DG_BUILD=$PWD/$build
export CK_DEFAULT_TIMEOUT=${CK_DEFAULT_TIMEOUT:-600}
pass=0; fail=0; failed_bins=()
start=$(date +%s)
for bin in "$@"; do
  t0=$(date +%s)
  out=$("$bin" 2>&1); rc=$?
  echo "$out" | grep -vE '^Running suite' | sed "s|^|  |" | grep -E 'Checks:|:[EF]:|SKIP|skip' || true
  # Check prints "NN%: Checks: X, Failures: Y, Errors: Z"
  line=$(echo "$out" | grep -E '[0-9]+%: Checks: [0-9]+' | tail -1)
  if [ -n "$line" ]; then
    c=$(echo "$line" | sed -E 's/.*Checks: ([0-9]+).*/\1/')
    f=$(echo "$line" | sed -E 's/.*Failures: ([0-9]+).*/\1/')
    e=$(echo "$line" | sed -E 's/.*Errors: ([0-9]+).*/\1/')
    pass=$((pass + c - f - e)); fail=$((fail + f + e))
  elif [ $rc -ne 0 ]; then fail=$((fail + 1)); fi
  if [ $rc -ne 0 ]; then failed_bins+=("$bin"); echo "$out" | tail -40; fi
  echo "$(basename "$bin"): rc=$rc ($(( $(date +%s) - t0 ))s)"
done
echo "total time: $(( $(date +%s) - start ))s"
[ ${#failed_bins[@]} -gt 0 ] && echo "failed programs: ${failed_bins[*]}"
echo "$pass passed, $fail failed"
[ $fail -eq 0 ] && [ ${#failed_bins[@]} -eq 0 ]
