#!/bin/sh
# bench/amx.sh - issue 18's checks on a CPU with AMX (Intel Sapphire Rapids
# and later), for when this project's own machine has none: build here, run
# there, in one short call.
#
#   sh bench/amx.sh pack        here: build-amx/pack/ gets the bf16 tests, the
#                               bench programs and qkv, built for Sapphire
#                               Rapids (make MARCH=sapphirerapids; the AMX
#                               kernel itself is chosen at run time, as
#                               always), stripped, with the shared libraries
#                               they need beyond glibc in build-amx/pack/lib
#   sh bench/amx.sh run [DIR]   there, at the root of a copy of the
#                               repository holding build-amx/pack/: prints
#                               the machine, runs test_bf16 and test_golden
#                               (the AMX kernel against the definition on
#                               real tiles), trains the demo's copy task in
#                               bf16 with qkv, and on a CPU with
#                               amx_bf16 the bench's figures for issue 18's
#                               AMX targets, where base's step goes, the
#                               attention heads, base's step without its
#                               products' arithmetic (make
#                               BF16_SKIP_SUMS=1: bench_train_skipsums),
#                               and last the bf16 step with k blocks of
#                               512 against 256 (make BF16_KC=512:
#                               bench_train_kc512);
#                               the log goes to DIR/amx.log too
#
# With the device tool (a machine lent with an accelerator, whose host CPU
# may have AMX; nothing is installed or fetched there):
#   run  command "sh bench/amx.sh run $OUT"  carry ["build-amx/pack"]
#        timeout_s 540
# `run` took about 7 minutes on this project's 2-core AMD EPYC (392 s
# from the tests to the end; the bench part forced onto avx512-bf16 with
# AMX_SH_KERNEL); on a Sapphire Rapids
# expect about as long (from issue 18's figures; base's rounds are most).
#
# The figures: 2 threads pinned to CPUs of two different cores, the four
# processes of a round (qkv fp32 and qkv bf16 on amx-bf16 taking turns in
# one, bench_train --precision both; qkv bf16 on avx512-bf16; PyTorch
# autocast bf16; PyTorch fp32) in turn, 3 rounds; the times are medians of
# the 3, each ratio the median of the rounds' ratios (as bench/run.sh's
# mixed-precision table). Targets: base bf16 <= 0.4 x
# PyTorch bf16 and <= 0.4 x qkv fp32, small bf16 <= 0.5 x PyTorch bf16.
set -e
. "$(dirname "$0")/lib.sh" # get, median, profile_table
P=build-amx/pack

if [ "$1" = pack ]; then
    B=build-amx
    PROGS="$B/tests/test_bf16 $B/tests/test_golden $B/tests/bench_matmul \
$B/bench/bench_train $B/examples/qkv"
    K2=build-amx-kc512 S2=build-amx-skipsums
    make --no-print-directory BUILD=$B MARCH=sapphirerapids $PROGS
    make --no-print-directory BUILD=$K2 MARCH=sapphirerapids BF16_KC=512 \
        $K2/bench/bench_train
    make --no-print-directory BUILD=$S2 MARCH=sapphirerapids BF16_SKIP_SUMS=1 \
        $S2/bench/bench_train
    rm -rf $P
    mkdir -p $P/tests $P/bench $P/examples $P/lib
    for f in $PROGS; do
        d=$P/${f#$B/}
        cp "$f" "$d"
        strip "$d"
    done
    cp $K2/bench/bench_train $P/bench/bench_train_kc512
    cp $S2/bench/bench_train $P/bench/bench_train_skipsums
    strip $P/bench/bench_train_kc512 $P/bench/bench_train_skipsums
    # every library a program loads but glibc's own (the loader, libc, libm
    # and the rest come from the machine it runs on)
    for f in $PROGS; do ldd "$f"; done | awk '$2 == "=>" && $3 ~ /^\// {print $3}' |
        sort -u | while read -r so; do
            case ${so##*/} in
            libc.so* | libm.so* | ld-linux* | libpthread.so* | libdl.so* | \
                librt.so* | libresolv.so*) ;;
            *) cp -L "$so" $P/lib/ ;;
            esac
        done
    echo "$P: $(du -sh $P | cut -f1) ($(ls $P/lib | tr '\n' ' '))"
    echo "there: sh bench/amx.sh run DIR   (device tool: carry [\"$P\"])"
    exit 0
fi
[ "$1" = run ] || {
    echo "usage: sh bench/amx.sh pack | run [DIR]" >&2
    exit 2
}
[ -x $P/bench/bench_train ] || {
    echo "bench/amx.sh: $P/bench/bench_train is missing: sh bench/amx.sh pack first, then carry $P" >&2
    exit 2
}
DIR=${2:-.}
set +e # a program that fails is in the log; the rest still run
export LD_LIBRARY_PATH="$PWD/$P/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
B=$P/bench/bench_train
NL='
'
# the first Python that imports torch (the device's python3 does; here,
# Debian's /usr/bin/python3); TORCH=0 if none does
PY=python3 TORCH=0
for p in python3 /usr/bin/python3; do
    if $p -c "import torch" 2>/dev/null; then
        PY=$p TORCH=1
        break
    fi
done
# the kernel measured as "amx" (trying this script on a CPU without AMX:
# AMX_SH_KERNEL=avx512-bf16)
K=${AMX_SH_KERNEL:-amx-bf16}

main() {
    echo "== the machine"
    echo "$(grep -m1 '^model name' /proc/cpuinfo)"
    echo "cpus: $(nproc), kernel $(uname -r), $(ldd --version 2>&1 | head -1)"
    FLAGS=$(grep -m1 '^flags' /proc/cpuinfo)
    echo "flags: $(echo "$FLAGS" | tr ' ' '\n' | grep -E '^(amx|avx512_bf16|avx512f$)' | tr '\n' ' ')"
    if [ $TORCH = 1 ]; then
        echo "PyTorch $($PY -c 'import torch; print(torch.__version__, torch.backends.mkldnn.is_available())') (version, oneDNN)"
    else
        echo "PyTorch: not found (no autocast figures)"
    fi
    echo

    # Two CPUs of two different cores (lscpu -p: CPU,CORE), first socket.
    PIN=""
    if command -v taskset >/dev/null && command -v lscpu >/dev/null; then
        CPUS=$(lscpu -p=CPU,CORE,SOCKET | grep -v '^#' |
            awk -F, 'NR == 1 {s = $3} $3 == s && !seen[$2]++ {print $1}' | head -2 |
            tr '\n' ',' | sed 's/,$//')
        case $CPUS in *,*) PIN="taskset -c $CPUS" ;; esac
    fi
    echo "pinned: ${PIN:-no (taskset or lscpu missing; threads run unpinned)}"
    echo

    echo "== tests (the bf16 kernels against their definition; golden models)"
    T0=$(date +%s)
    sh tests/run.sh $P/tests/test_bf16 $P/tests/test_golden
    echo "tests took $(($(date +%s) - T0)) s"
    echo
    echo "== qkv train: make demo's copy task in bf16"
    $P/examples/qkv train --task copy --steps 800 --precision bf16 \
        --out "${TMPDIR:-/tmp}/qkv-amx-copy" --force
    echo

    if [ $K = amx-bf16 ] && ! echo "$FLAGS" | grep -qw amx_bf16; then
        echo "no amx_bf16 on this CPU: the AMX figures need one; stopping here"
        return 0
    fi

    # the CPU has the instructions; Linux (or a sandbox's kernel) must also
    # grant the tile state, else the kernel cannot run and this says why
    if ! QKV_BF16_KERNEL=$K $B tiny --threads 1 --steps 1 --reps 1 \
        --precision bf16 >/dev/null; then
        echo "the $K kernel cannot run here (above: why); stopping here"
        return 0
    fi

    echo "== peaks (one core; bench_matmul bf16 peak, bench_train peak)"
    BF=$($PIN $P/tests/bench_matmul bf16 peak)
    echo "$BF"
    PK=$(get "$BF" amx_peak_gflops)
    [ -n "$PK" ] || PK=$(get "$BF" bf16_peak_gflops)
    echo "fma: $($PIN $B peak --threads 2)"
    echo

    # PyTorch's products: MKL or oneDNN where it is pip's (threads as
    # torch's); Debian's calls OpenBLAS, given 1 thread (2 x 2 threads on 2
    # CPUs would cost it 3x) and its AVX-512 kernels, as bench/run.sh does
    export OPENBLAS_CORETYPE=${QKV_OPENBLAS_CORETYPE:-SkylakeX}

    # One round of a config: qkv fp32, qkv bf16 (amx-bf16), qkv bf16
    # (avx512-bf16), PyTorch bf16, PyTorch fp32, ms per step each; the amx
    # step's GFLOPS, and its ratio to fp32 (the two take turns in one
    # process, as in make bench: bench_train --precision both); a line.
    round() {
        cfg=$1 st=$2 re=$3
        La=$(QKV_BF16_KERNEL=$K $PIN $B $cfg --threads 2 --steps $st --reps $re --precision both)
        f=$(get "$La" fp32_ms) a=$(get "$La" bf16_ms) ga=$(get "$La" bf16_gflops)
        v=$(get "$(QKV_BF16_KERNEL=avx512-bf16 $PIN $B $cfg --threads 2 --steps $st --reps $re --precision bf16)" ms_per_step)
        tb=- tf=-
        if [ $TORCH = 1 ]; then
            tb=$(get "$(OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1 $PIN $PY bench/bench_torch.py $cfg --threads 2 --steps $st --reps $re --precision bf16)" ms_per_step)
            tf=$(get "$(OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1 $PIN $PY bench/bench_torch.py $cfg --threads 2 --steps $st --reps $re)" ms_per_step)
        fi
        echo "$f $a $v $tb $tf $ga $(get "$La" bf16_over_fp32)"
    }
    ratio() {
        echo "$R" | awk -v a=$1 -v b=$2 \
            '{print $a == "-" || $b == "-" ? "-" : sprintf("%.3f", $a / $b)}' | median
    }
    col() { echo "$R" | awk -v c=$1 '{print $c}' | median; }
    # A config's bf16 step (kernel $K) with two programs in turn, 3 rounds:
    # pair CFG STEPS REPS NAME1 PROGRAM1 NAME2 PROGRAM2; a line a round,
    # then the medians and the median of the rounds' ratios.
    pair() {
        R=""
        for i in 1 2 3; do
            a=$(get "$(QKV_BF16_KERNEL=$K $PIN $5 $1 --threads 2 --steps $2 --reps $3 --precision bf16)" ms_per_step)
            b=$(get "$(QKV_BF16_KERNEL=$K $PIN $7 $1 --threads 2 --steps $2 --reps $3 --precision bf16)" ms_per_step)
            echo "$1 $K round $i: $4 $a $6 $b"
            R="${R:+$R$NL}$a $b"
        done
        echo "$1 $K: $4 $(col 1), $6 $(col 2), $6/$4 $(echo "$R" | awk '{printf "%.3f\n", $2 / $1}' | median)"
    }

    echo "== training step, 2 threads, 3 alternating rounds (ms per step; raw rounds first)"
    for cfg in small base; do
        case $cfg in small) st=20 re=5 ;; base) st=4 re=3 ;; esac
        R=""
        for i in 1 2 3; do
            r=$(round $cfg $st $re)
            set -- $r
            echo "$cfg round $i: fp32 $1 amx $2 avx512 $3 torch_bf16 $4 torch_fp32 $5 amx/fp32 $7"
            R="${R:+$R$NL}$r"
        done
        pct=$(awk -v g="$(col 6)" -v p="$PK" 'BEGIN{printf "%.1f", 100 * g / (2 * p)}')
        echo "$cfg: qkv fp32 $(col 1), qkv bf16 amx $(col 2) ($(col 6) GFLOPS, $pct% of 2 x $PK), avx512-bf16 $(col 3), PyTorch bf16 $(col 4), PyTorch fp32 $(col 5)"
        echo "$cfg: amx/qkv_fp32 $(col 7 | awk '{printf "%.3f", $1}'), amx/torch_bf16 $(ratio 2 4), amx/avx512 $(ratio 2 3), torch_bf16/torch_fp32 $(ratio 4 5)"
    done
    echo

    # where base's step goes (bench_train --profile: per op kind, forward +
    # backward, and Adam), what bounds the amx step where a target is missed
    echo "== where base's step goes, 2 threads (ms per step; share: of the amx step)"
    PF=$($PIN $B base --threads 2 --steps 4 --reps 3 --profile)
    PV=$(QKV_BF16_KERNEL=avx512-bf16 $PIN $B base --threads 2 --steps 4 --reps 3 --profile --precision bf16)
    PA=$(QKV_BF16_KERNEL=$K $PIN $B base --threads 2 --steps 4 --reps 3 --profile --precision bf16)
    profile_table fp32 "$PF" avx512 "$PV" amx "$PA"
    echo

    # The same step with the linear layers' products left out (make
    # BF16_SKIP_SUMS=1: their kernels skip the k loops; packing, C's
    # stores and block sums, attention, layer norm and Adam all as before):
    # what the step costs beside the tiles' arithmetic, the floor the amx
    # step cannot go under without fewer passes over memory.
    echo "== base without its products' arithmetic, 2 threads, 3 alternating rounds (ms per step)"
    BS=$P/bench/bench_train_skipsums
    pair base 4 3 with $B without $BS
    PS=$(QKV_BF16_KERNEL=$K $PIN $BS base --threads 2 --steps 4 --reps 3 --profile --precision bf16)
    profile_table amx "$PA" amx_nosums "$PS"
    echo

    # with amx-bf16 the small heads' bf16 products run on AMX tiles, with
    # avx512-bf16 on vdpbf16ps: which pays on this CPU, and from what size
    # (core/ops.h, qkv_attention_bf16_min: the rule is Zen 5's for both)
    echo "== attention heads, 2 threads (bf16 on AMX tiles against fp32; rule: what qkv picks)"
    QKV_BF16_KERNEL=$K $PIN $B attention --threads 2 --reps 5
    echo "== attention heads, 2 threads (bf16 on vdpbf16ps against fp32)"
    QKV_BF16_KERNEL=avx512-bf16 $PIN $B attention --threads 2 --reps 5
    echo
    # Each k block's sums go to C in a pass over the block's C (bf16.h);
    # on tiles a 32 x 32 piece's block of 256 k is 32 TDPBF16PS (512
    # cycles at one per 16) and its pass over C (the tiles stored, added
    # to C's 4 KB) a large part beside them. Blocks of 512 halve those
    # passes and the weight gradients' block sums (gemm_ksplit); they also
    # change the bits, hence a build of their own (make BF16_KC=512).
    echo "== k blocks of 512 against 256, bf16 step, 2 threads, 3 alternating rounds (ms per step)"
    B5=$P/bench/bench_train_kc512
    for cfg in small base; do
        case $cfg in small) st=20 re=5 ;; base) st=4 re=3 ;; esac
        pair $cfg $st $re kc256 $B kc512 $B5
    done
    echo "all took $(($(date +%s) - T0)) s"
}
# tee writes the log as it goes: what ran before a timeout is kept
main 2>&1 | tee "$DIR/amx.log"
