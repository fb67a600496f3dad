#!/bin/sh
# bench/run.sh BUILD_DIR - qkv's training speed beside PyTorch's, measured in
# the same run, in fp32 and in bf16 (qkv --precision bf16 beside PyTorch's
# autocast), the threads' shares against equal pieces, generation with and
# without the key/value cache, and the matmul kernels (make bench runs
# this).
#
# For each config (tiny, small, base; see bench/bench_train.c) qkv trains
# with 1 and 2 threads and PyTorch (Debian's python3-torch, when it imports)
# with 1 and 2 threads and 1 and 2 BLAS threads, each in its own process.
# Ratios are qkv / PyTorch (below 1: qkv is faster): qkv on 1 thread against
# PyTorch on one core (1 thread, 1 BLAS thread), qkv on 2 threads against
# PyTorch's best of the four settings.
# Quiet machine wanted for the main table. The last table keeps the other
# cores busy itself (bench_train spin) and compares qkv's default thread
# count, which follows the load (core/threads.h), with 1 thread and with a
# fixed count of every CPU.
set -e
. "$(dirname "$0")/lib.sh" # get, median, profile_table
BUILD=${1:-build}
B=$BUILD/bench/bench_train
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
TORCH=0
if "$PY" -c "import torch" 2>/dev/null; then TORCH=1; fi
# Debian's torch does its matrix products in whatever libblas.so.3 is
# installed: the netlib reference one is ~30x slower than OpenBLAS, which
# would flatter qkv. With OpenBLAS, its AVX-512 kernels are selected here
# (the default detection picks AVX2 ones on this CPU).
# This machine's environment presets OPENBLAS_CORETYPE=Haswell (AVX2), so
# it is overridden; QKV_OPENBLAS_CORETYPE picks another.
export OPENBLAS_CORETYPE=${QKV_OPENBLAS_CORETYPE:-SkylakeX}
if [ $TORCH = 1 ]; then
    BLAS=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || true)
    echo "PyTorch: $("$PY" -c 'import torch; print(torch.__version__)'), BLAS $BLAS"
    case $BLAS in
    *openblas*) ;;
    *) echo "warning: PyTorch uses a reference BLAS; apt-get install libopenblas0-pthread for a fair peer";;
    esac
    echo
fi

echo "== the machine: FMA peak (register-resident AVX-512 FMA loop)"
P1=$(get "$($B peak --threads 1)" peak_gflops)
P2=$(get "$($B peak --threads 2)" peak_gflops)
echo "peak: $P1 GFLOPS on 1 thread, $P2 on 2"
# On a shared host the two vCPUs move between placements, and the 2-thread
# figures with them: the round trip of a cache line between two threads
# tells which one a table ran in (printed again before the later tables).
rtt() { echo "core-to-core round trip: $(get "$($B pingpong --threads 2)" round_trip_ns) ns"; }
rtt
echo
echo "== the tape: time per recorded op (1-element add, recording on - off)"
$B tape
echo

steps_of() { case $1 in tiny) echo "50 5";; small) echo "20 5";; base) echo "4 5";; esac; }

# The line (key=value ...) with the median ms_per_step of the lines on stdin.
median_line() {
    awk '{for (i = 1; i <= NF; i++) if ($i ~ /^ms_per_step=/) {
              split($i, kv, "="); print kv[2] " " $0 }}' |
        sort -n | awk '{l[NR] = $0} END {print l[int((NR + 1) / 2)]}' |
        cut -d' ' -f2-
}
# Each figure is the median of three processes, each the median of its own
# runs: a burst of load from outside (this is often a shared machine) lasts
# longer than one process and would otherwise decide a ratio. The processes
# of a ratio's two sides alternate (qkv, PyTorch, qkv, ...), and the ratio
# is the median of the three pairs' ratios.

printf '== training step (forward + backward + Adam), median of 3 processes x 5 runs\n'
printf '%-6s %-7s %9s %11s %8s %7s %8s %7s %14s %9s %8s\n' \
    config threads ms/step tokens/s GFLOPS %peak RSS_MB allocs \
    "torch_ms(t/blas)" torch_RSS ratio
for cfg in tiny small base; do
    set -- $(steps_of $cfg)
    ST=$1 RE=$2
    BT=""
    if [ $TORCH = 1 ]; then
        # torch's own threads x its BLAS's threads, once each: the 1-thread
        # row is compared with 1/1 (one core, as qkv's), the 2-thread row
        # with the fastest of the four
        BMS=""
        for t in 1 2; do for ob in 1 2; do
            ms=$(get "$(OPENBLAS_NUM_THREADS=$ob OMP_NUM_THREADS=$t "$PY" \
                bench/bench_torch.py $cfg --threads $t --steps $ST --reps $RE)" \
                ms_per_step)
            if [ -z "$BMS" ] || awk "BEGIN{exit !($ms < $BMS)}"; then
                BMS=$ms BT="$t/$ob"
            fi
        done; done
    fi
    for t in 1 2; do
        TS=1/1
        [ $t = 2 ] && TS=$BT
        QL="" TLS="" RL=""
        for i in 1 2 3; do
            Lq=$($B $cfg --threads $t --steps $ST --reps $RE)
            QL="$QL$Lq
"
            if [ $TORCH = 1 ]; then
                Lt=$(OPENBLAS_NUM_THREADS=${TS#*/} OMP_NUM_THREADS=${TS%/*} \
                    "$PY" bench/bench_torch.py $cfg --threads ${TS%/*} \
                    --steps $ST --reps $RE)
                TLS="$TLS$Lt
"
                RL="$RL$(get "$Lq" ms_per_step) $(get "$Lt" ms_per_step)
"
            fi
        done
        L=$(printf '%s' "$QL" | median_line)
        TL=$(printf '%s' "$TLS" | median_line)
        R=$(printf '%s' "$RL" | awk '{print $1 / $2}' | median)
        peak=$P1
        [ $t = 2 ] && peak=$P2
        awk -v c=$cfg -v t=$t -v ms="$(get "$L" ms_per_step)" \
            -v tok="$(get "$L" tokens_per_s)" -v gf="$(get "$L" gflops)" \
            -v peak=$peak -v rss="$(get "$L" rss_mb)" \
            -v al="$(get "$L" allocs_after_warmup)" \
            -v tms="$(get "$TL" ms_per_step)" -v trss="$(get "$TL" rss_mb)" \
            -v tt="$TS" -v r="$R" 'BEGIN{
            printf "%-6s %-7s %9.2f %11.0f %8.1f %6.1f%% %8.1f %7d %14s %9s %8s\n",
                c, t, ms, tok, gf, 100 * gf / peak, rss, al,
                tms == "" ? "-" : sprintf("%.2f (%s)", tms, tt),
                trss == "" ? "-" : trss, r == "" ? "-" : sprintf("%.3f", r) }'
    done
done
[ $TORCH = 1 ] || echo "(PyTorch not found: apt-get install python3-torch for the ratios)"
echo

# Mixed precision: the linear layers' products from bf16 operands with fp32
# sums (qkv --precision bf16; PyTorch: torch.autocast("cpu", bfloat16)),
# beside fp32, all measured here. This host's speed drifts by 15-35% within
# minutes, so qkv's two precisions run in one process, taking turns run by
# run (bench_train --precision both: a pair's two runs are a second or less
# apart), and its ratio is the median of the pairs'; that process and
# PyTorch's two (autocast bf16, fp32) run in turn, 3 rounds of them. The
# times are the medians of the 3 rounds, each ratio the median of the 3
# rounds' ratios, and range= the smallest and largest of qkv's rounds'
# bf16/fp32. % of peak: the step's matrix-product GFLOPS over the peak of
# the instruction the bf16 kernel runs on (bench_matmul bf16 measures one
# core's: AMX's TDPBF16PS where the kernel is amx-bf16, else vdpbf16ps), or
# over the FMA peak where the CPU has no bf16 instruction.
BF=$($BUILD/tests/bench_matmul bf16 peak)
echo "$BF"
PB1=$(get "$BF" bf16_peak_gflops)
[ "$(get "$BF" bf16_kernel)" = amx-bf16 ] && PB1=$(get "$BF" amx_peak_gflops)
[ -n "$PB1" ] || PB1=$P1
rtt
printf '== mixed precision (bf16 products, fp32 sums), 3 alternating rounds\n'
printf '%-6s %-7s %9s %9s %9s %11s %11s %11s %8s %8s\n' config threads \
    fp32_ms bf16_ms bf16/fp32 range %bf16_peak torch_bf16 qkv/torch torch/fp32
for cfg in tiny small base; do
    set -- $(steps_of $cfg)
    ST=$1 RE=$2
    for t in 1 2; do
        # one line a round: qkv fp32 ms, qkv bf16 ms, bf16 GFLOPS, qkv
        # bf16/fp32, PyTorch bf16 ms, PyTorch fp32 ms (- without PyTorch)
        R=$(for i in 1 2 3; do
            Lp=$($B $cfg --threads $t --steps $ST --reps $RE --precision both)
            tb=- tf=-
            if [ $TORCH = 1 ]; then
                tb=$(get "$(OPENBLAS_NUM_THREADS=$t OMP_NUM_THREADS=$t "$PY" \
                    bench/bench_torch.py $cfg --threads $t --steps $ST \
                    --reps $RE --precision bf16)" ms_per_step)
                tf=$(get "$(OPENBLAS_NUM_THREADS=$t OMP_NUM_THREADS=$t "$PY" \
                    bench/bench_torch.py $cfg --threads $t --steps $ST \
                    --reps $RE)" ms_per_step)
            fi
            echo "$(get "$Lp" fp32_ms) $(get "$Lp" bf16_ms)" \
                "$(get "$Lp" bf16_gflops) $(get "$Lp" bf16_over_fp32) $tb $tf"
        done)
        col() { echo "$R" | awk -v c=$1 '{print $c}' | median; }
        ratio() { echo "$R" | awk -v a=$1 -v b=$2 '{print $a == "-" || $b == "-" ? "-" : $a / $b}' | median; }
        range=$(echo "$R" | awk 'NR == 1 || $4 < lo {lo = $4} NR == 1 || $4 > hi {hi = $4}
            END {printf "%.3f-%.3f", lo, hi}')
        awk -v c=$cfg -v t=$t -v f="$(col 1)" -v b="$(col 2)" -v gf="$(col 3)" \
            -v pk=$PB1 -v tb="$(col 5)" -v rb="$(col 4)" -v rq="$(ratio 2 5)" \
            -v rt="$(ratio 5 6)" -v rg="$range" 'BEGIN{
            printf "%-6s %-7s %9.2f %9.2f %9.3f %11s %10.1f%% %11s %8s %8s\n",
                c, t, f, b, rb, rg, 100 * gf / (pk * t),
                tb == "-" ? "-" : sprintf("%.2f", tb),
                rq == "-" ? "-" : sprintf("%.3f", rq),
                rt == "-" ? "-" : sprintf("%.3f", rt) }'
    done
done
[ $TORCH = 1 ] || echo "(PyTorch not found: apt-get install python3-torch for autocast)"
echo

# Where base's step goes, in fp32 and in bf16 (bench_train --profile: the
# tape's time per op kind, forward + backward, and the trainer's Adam
# step): what bounds the bf16 step once its products are fast. One
# process each, 2 threads; matmul is the linear layers' products with
# their packing, attention its heads' six products and softmax.
rtt
printf '== where base'"'"'s step goes, 2 threads (ms per step; share: of the bf16 step)\n'
set -- $(steps_of base)
PF=$($B base --threads 2 --steps $1 --reps $2 --profile)
PB=$($B base --threads 2 --steps $1 --reps $2 --profile --precision bf16)
profile_table fp32 "$PF" bf16 "$PB"
echo

# Attention: one layer's forward + backward with bf16 products against
# fp32, per head shape (bench_train attention: 256 heads, the model's
# layout, the two alternating); rule: what a bf16 graph's heads of that
# shape take with this CPU's kernel (core/ops.h qkv_attention_bf16_min).
rtt
printf '== attention heads (256 of T x S x K, forward + backward), medians of 11 alternating runs\n'
printf '%-7s %-14s %9s %9s %9s %6s\n' threads "T x S x K" fp32_ms bf16_ms bf16/fp32 rule
for t in 1 2; do
    $B attention --threads $t --reps 11 | while read -r L; do
        awk -v t=$t -v T="$(get "$L" T)" -v S="$(get "$L" S)" -v K="$(get "$L" K)" \
            -v f="$(get "$L" fp32_ms)" -v b="$(get "$L" bf16_ms)" \
            -v r="$(get "$L" bf16_over_fp32)" -v u="$(get "$L" rule)" 'BEGIN{
            printf "%-7s %-14s %9.3f %9.3f %9.3f %6s\n", t, T " x " S " x " K, f, b, r, u }'
    done
done
echo

# Shares (core/threads.h): the products' and attention heads' pieces cut by
# the threads' learned speeds against equal pieces, alternating run by run
# in one process (bench_train --shares both); the vCPUs' own FMA speeds,
# measured all at once before and after, say whether the host ran them
# alike. Learned should be ~1.0 when they are alike and below when not.
printf "== threads' shares: pieces by learned speeds against equal ones, 2 threads, medians of 8 alternating runs\n"
vcpus() { L=$($B vcpus); echo "vCPU FMA GFLOPS, all at once: $(get "$L" vcpu_gflops) (slowest/fastest $(get "$L" slowest_over_fastest))"; }
vcpus
printf '%-6s %-9s %9s %11s %13s %13s %7s\n' config precision equal_ms learned_ms learned/equal "(range)" share0
for cfg in small base; do
    ST=10; [ $cfg = base ] && ST=3
    for p in fp32 bf16; do
        L=$($B $cfg --threads 2 --precision $p --shares both --steps $ST --reps 8)
        awk -v c=$cfg -v p=$p -v e="$(get "$L" equal_ms)" -v l="$(get "$L" learned_ms)" \
            -v r="$(get "$L" learned_over_equal)" -v lo="$(get "$L" ratio_min)" \
            -v hi="$(get "$L" ratio_max)" -v s="$(get "$L" share0)" 'BEGIN{
            printf "%-6s %-9s %9.2f %11.2f %13.3f %13s %7.3f\n", c, p, e, l, r,
                sprintf("%.2f-%.2f", lo, hi), s }'
    done
done
vcpus
echo

# Generation: bench_train generate alternates a 512-token sample with the
# key/value cache and one recomputing the prefix at every step, and prints
# the medians; the two must draw the same tokens.
rtt
printf '== generation: a 512-token sample (decoder-only, D 128, 2 layers, 4 heads, F 512, V 64), medians of 5 alternating runs\n'
printf '%-9s %-7s %15s %19s %8s %12s\n' precision threads "cache tok/s" "recompute tok/s" speedup same_tokens
for p in fp32 bf16; do for t in 1 2; do
    L=$($B generate --threads $t --reps 5 --precision $p)
    awk -v p=$p -v t=$t -v c="$(get "$L" cache_tokens_per_s)" \
        -v r="$(get "$L" recompute_tokens_per_s)" -v x="$(get "$L" speedup)" \
        -v s="$(get "$L" same_tokens)" 'BEGIN{
        printf "%-9s %-7s %15.0f %19.1f %8.2f %12s\n", p, t, c, r, x, s }'
done; done
echo

# Busy machine: every CPU but one runs a spinning process (started here).
# Runs alternate between the three settings; each figure is the median of 3
# processes. Target: the default <= 1.3 x the 1-thread time.
NCPU=$(nproc)
NSPIN=$((NCPU - 1))
[ $NSPIN -ge 1 ] || NSPIN=1
printf '== with the other core busy (%d spinning process(es) on %d CPUs), median of 3 processes\n' $NSPIN $NCPU
printf '%-6s %14s %14s %14s %12s %12s\n' config "1 thread ms" "default ms" \
    "$NCPU fixed ms" "default/1" "threads_end"
SPIN=""
for i in $(seq $NSPIN); do $B spin & SPIN="$SPIN $!"; done
trap 'kill $SPIN 2>/dev/null' EXIT
for cfg in tiny small base; do
    set -- $(steps_of $cfg)
    ST=$1 RE=$2
    r1="" rd="" rf=""
    for i in 1 2 3; do
        r1="$r1$($B $cfg --threads 1 --steps $ST --reps $RE)
"
        rd="$rd$($B $cfg --steps $ST --reps $RE)
"
        rf="$rf$($B $cfg --threads $NCPU --steps $ST --reps $RE)
"
    done
    L1=$(printf '%s' "$r1" | median_line)
    LD=$(printf '%s' "$rd" | median_line)
    LF=$(printf '%s' "$rf" | median_line)
    awk -v c=$cfg -v a="$(get "$L1" ms_per_step)" -v d="$(get "$LD" ms_per_step)" \
        -v f="$(get "$LF" ms_per_step)" -v te="$(get "$LD" threads_at_end)" 'BEGIN{
        printf "%-6s %14.2f %14.2f %14.2f %12.3f %12s\n", c, a, d, f, d / a, te }'
done
kill $SPIN 2>/dev/null
trap - EXIT
echo
echo "== matmul kernels (bench_matmul)"
$BUILD/tests/bench_matmul
