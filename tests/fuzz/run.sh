#!/bin/sh
# make fuzz FUZZ_S=N: runs each harness DIR/fuzz_NAME for SECONDS on a
# scratch copy of its seeds (DIR/corpus/NAME, remade each time, so what a run
# finds never lands in the committed tests/fuzz/corpus/NAME) and prints its
# last status line (runs, coverage, corpus). A crash, leak, timeout, exit or
# sanitizer report fails the run: the input is saved as DIR/crash-NAME-*
# (replay it with DIR/fuzz_NAME FILE) and the end of the log is printed.
#
#   sh tests/fuzz/run.sh build-fuzz 60 ckpt tsv json flags text spm
dir=$1
secs=$2
shift 2
failed=0
for name in "$@"; do
    work=$dir/corpus/$name
    log=$dir/fuzz_$name.log
    rm -rf "$work"
    mkdir -p "$work"
    cp tests/fuzz/corpus/"$name"/* "$work"/
    echo "== fuzz_$name: $secs s on $(find "$work" -type f | wc -l) seeds"
    if "$dir/fuzz_$name" -max_total_time="$secs" -timeout=30 \
        -print_final_stats=1 -artifact_prefix="$dir/crash-$name-" \
        "$work" >"$log" 2>&1; then
        grep -E '^#[0-9]+' "$log" | tail -n 1
        grep -E '^stat::number_of_executed_units' "$log"
    else
        tail -n 40 "$log"
        echo "FAIL fuzz_$name: see $log"
        failed=1
    fi
done
exit $failed
