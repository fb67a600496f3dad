#!/bin/sh
# Runs each test program given as an argument and totals its PASS/FAIL lines.
# A program that dies or exits non-zero without printing a FAIL line counts as
# one failure. Ends with exactly one line "N passed, N failed"; exits 1 on any
# failure. A case the machine cannot run prints "SKIP prog/case: skipped:
# why" and counts as neither. RUNNER, if set, is a command that runs each program (tests/vg.sh).
passed=0
failed=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for t in "$@"; do
    $RUNNER "$t" >"$out" 2>&1
    rc=$?
    cat "$out"
    p=$(grep -c '^PASS ' "$out")
    f=$(grep -c '^FAIL ' "$out")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL $(basename "$t"): exited with status $rc"
        f=1
    fi
    passed=$((passed + p))
    failed=$((failed + f))
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
