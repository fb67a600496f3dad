#!/bin/sh
# bench/mpi.sh BUILD MPI_BUILD - data-parallel training on this machine
# (make bench-mpi): for each bench config, the step of 1 process x 2 threads
# and of 2 ranks x 1 thread (mpirun; the step includes its all-reduce), and
# the all-reduce of the gradient buffer alone. Medians of 3 processes, run
# alternately. The numbers feed the README's "Many machines" cost model.
set -e
B=$1/bench/bench_train
M=$2/bench/bench_train
RUN="mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2"
. "$(dirname "$0")/lib.sh" # get
med() { sort -n | sed -n 2p; }
steps_of() { case $1 in tiny) echo "50 5";; small) echo "20 5";; base) echo "4 5";; esac; }
printf "%-6s %9s %14s %16s %16s %7s\n" config grad_MB allreduce_ms \
    "1x2 thr ms/step" "2x1 rank ms/step" ratio
for cfg in tiny small base; do
    set -- $(steps_of $cfg)
    : >/tmp/qkv-mpi-one; : >/tmp/qkv-mpi-two; : >/tmp/qkv-mpi-ar
    for i in 1 2 3; do
        get "$($B $cfg --threads 2 --steps $1 --reps $2)" ms_per_step >>/tmp/qkv-mpi-one
        L=$($RUN $M $cfg --threads 1 --steps $1 --reps $2)
        get "$L" ms_per_step >>/tmp/qkv-mpi-two
        get "$L" allreduce_ms >>/tmp/qkv-mpi-ar
        MB=$(get "$L" grad_mb)
    done
    one=$(med </tmp/qkv-mpi-one); two=$(med </tmp/qkv-mpi-two)
    ar=$(med </tmp/qkv-mpi-ar)
    printf "%-6s %9s %14s %16s %16s %7.2f\n" $cfg "$MB" "$ar" "$one" "$two" \
        "$(echo "$two $one" | awk '{print $1 / $2}')"
done
rm -f /tmp/qkv-mpi-one /tmp/qkv-mpi-two /tmp/qkv-mpi-ar
