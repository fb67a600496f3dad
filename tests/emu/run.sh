#!/bin/sh
# tests/emu/run.sh - qkv's AMX tests on an emulated Intel Sapphire Rapids,
# for machines without AMX (this project's are often AMD Zen 5): Bochs 3.0
# boots Debian's Linux, which runs test programs built here.
#
#   make test-amx-emu         (= sh tests/emu/run.sh)
#
# Everything goes to build-emu/ and is kept for the next run:
#  1. From Debian trixie (deb.debian.org, through a private apt
#     configuration: nothing is installed): the Bochs 3.0 source (its
#     checksum pinned below), Bochs's BIOS images, trixie's Linux image.
#  2. Bochs built with AMX and tests/emu/bochs-3.0.patch (XFD, without which
#     Linux leaves the tiles off, and five Bochs bugs that qkv's code meets).
#  3. qkv's test programs, built for Sapphire Rapids (make MARCH=
#     sapphirerapids, as bench/amx.sh packs them for a machine with AMX).
#  4. An initramfs: busybox, this machine's glibc and libraries, the
#     programs, tests/golden; its /init runs the tests below and powers off.
#  5. Bochs boots it from an ISO image (isolinux); the guest's serial port
#     is build-emu/serial.log.
# Prints the guest's output, then "N passed, N failed" over its PASS/FAIL
# lines; exits 1 on a failure, on a skipped AMX case (the emulated CPU did
# not give AMX), or when the guest did not finish (EMU_TIMEOUT, seconds).
#
# EMU_MARCH: the programs' -march (default: sapphirerapids).
# EMU_TESTS: what the guest runs, "program:filter" (QKV_TEST, tests/test.h)
# separated by spaces; tiles_kept is tests/emu/tiles_kept.c, the
# emulator's own check that a process keeps its tiles across context
# switches (what its XSAVE bug broke). Then the AMX kernel on every shape
# class, AMX's sum order, the avx512-bf16 kernel (the emulator's AVX-512
# against the definition: what its VCVTNE2PS2BF16 bug broke), a bf16
# model's gradients, weights, decoding and steps with AMX chosen (the
# default there), and small attention heads on AMX tiles against the
# blocked path with the AMX kernel. Booting takes ~20 s; the tests, ~7 minutes on the
# project's AMD EPYC (emulating a TDPBF16PS, 8192 multiply-adds, is slow).
set -eu
cd "$(dirname "$0")/../.."
E=${EMU_DIR:-build-emu}
TIMEOUT=${EMU_TIMEOUT:-3600}
TESTS=${EMU_TESTS:-"tiles_kept: test_bf16:sums_as_the_sdm test_bf16:amx_kernel \
test_bf16:avx512_bf16_kernel test_bf16:bf16_gradients \
test_bf16:packed_weights_follow test_bf16:cached_decoding \
test_bf16:steps_same_for_any test_bf16:attention_avx512 \
test_bf16:attention_amx_is test_golden:"}
BOCHS_SHA256=78f6c73d4a6472d5130a87ab9dc306d02c7c71ed8e25b3a8ef642e2a7acd282b
MARCH=${EMU_MARCH:-sapphirerapids}
say() { echo "== emu: $*"; }
die() {
    echo "tests/emu/run.sh: $*" >&2
    exit 2
}

# ---- this machine's tools
need=""
command -v g++ >/dev/null || need="$need g++"
command -v xorriso >/dev/null || need="$need xorriso"
command -v cpio >/dev/null || need="$need cpio"
command -v xz >/dev/null || need="$need xz-utils"
[ -e /usr/lib/ISOLINUX/isolinux.bin ] || need="$need isolinux"
[ -e /usr/lib/syslinux/modules/bios/ldlinux.c32 ] || need="$need syslinux-common"
[ -e /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 ||
    need="$need busybox-static"
if [ -n "$need" ]; then
    say "installing:$need"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $need ||
        die "could not install$need"
fi

# ---- 1. Debian trixie's packages
mkdir -p "$E/apt/lists/partial" "$E/apt/cache/archives/partial" "$E/dl"
A=$(cd "$E/apt" && pwd)
echo "deb http://deb.debian.org/debian trixie main
deb-src http://deb.debian.org/debian trixie main" >"$A/sources.list"
touch "$A/status"
trixie() {
    cmd=$1
    shift
    $cmd -q -o Dir::Etc::SourceList="$A/sources.list" \
        -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists="$A/lists" \
        -o Dir::Cache="$A/cache" -o Dir::State::status="$A/status" \
        -o APT::Sandbox::User=root "$@"
}
fetched() { ls "$E/dl/"$1 >/dev/null 2>&1; }
if ! fetched 'bochs_3.0+dfsg.orig.tar.xz' || ! fetched 'bochsbios_*.deb' ||
    ! fetched 'vgabios_*.deb' || ! fetched 'linux-image-*.deb'; then
    say "fetching from Debian trixie"
    trixie apt-get update -qq || die "apt-get update of Debian trixie failed"
    kernel=$(trixie apt-cache depends linux-image-amd64 |
        awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$kernel" ] || die "no linux-image in Debian trixie's lists"
    (cd "$E/dl" && trixie apt-get download -qq bochsbios vgabios "$kernel") ||
        die "downloading bochsbios, vgabios, $kernel failed"
    # the mirror may lack the .dsc (404): the tarball is checked below
    (cd "$E/dl" && trixie apt-get source --download-only -qq bochs) \
        >"$E/dl/source.log" 2>&1 || true
fi
[ -s "$E/dl/bochs_3.0+dfsg.orig.tar.xz" ] ||
    die "Bochs 3.0's source did not download (Debian trixie): see $E/dl/source.log"
echo "$BOCHS_SHA256  $E/dl/bochs_3.0+dfsg.orig.tar.xz" | sha256sum -c --quiet ||
    die "$E/dl/bochs_3.0+dfsg.orig.tar.xz: not Bochs 3.0 (checksum)"

# ---- 2. Bochs
B=$E/bochs-3.0
stamp=$(sha256sum <tests/emu/bochs-3.0.patch | cut -c1-16)
if [ ! -x "$B/bochs" ] || [ "$(cat "$B/.qkv-patch" 2>/dev/null)" != "$stamp" ]; then
    say "building Bochs 3.0 (~2 minutes on 2 cores)"
    rm -rf "$B"
    tar -C "$E" -xf "$E/dl/bochs_3.0+dfsg.orig.tar.xz"
    patch -s -p1 -d "$B" <tests/emu/bochs-3.0.patch
    # --disable-show-ips: its SIGALRM handler logs, and deadlocks when
    # the alarm comes while the emulator holds its log's lock
    (cd "$B" && ./configure -q --with-nogui --enable-x86-64 \
        --enable-cpu-level=6 --enable-amx --enable-avx --enable-evex \
        --enable-cet --enable-fpu --enable-pci --enable-cdrom \
        --enable-all-optimizations --enable-repeat-speedups \
        --disable-show-ips >configure.log 2>&1 &&
        make -j"$(nproc)" >make.log 2>&1) ||
        die "building Bochs failed: see $B/configure.log, $B/make.log"
    echo "$stamp" >"$B/.qkv-patch"
fi
R=$E/root
rm -rf "$R" && mkdir -p "$R"
for d in "$E"/dl/bochsbios_*.deb "$E"/dl/vgabios_*.deb; do
    dpkg-deb -x "$d" "$R"
done
dpkg-deb --fsys-tarfile "$(ls "$E"/dl/linux-image-*.deb | tail -1)" |
    tar -C "$R" -x ./boot
vmlinuz=$(ls "$R"/boot/vmlinuz-* | tail -1)

# ---- 3. the test programs
Q=$E/qkv
[ "$(cat "$Q/.march" 2>/dev/null)" = "$MARCH" ] || rm -rf "$Q" # the objects' flags
mkdir -p "$Q" && echo "$MARCH" >"$Q/.march"
progs=$(for t in $TESTS; do echo "$Q/tests/${t%%:*}"; done | sort -u)
say "building $(echo $progs | sed "s#$Q/tests/##g") (MARCH=$MARCH)"
built=$(echo "$progs" | grep -v '/tiles_kept$' || true)
[ -z "$built" ] || make -s --no-print-directory -j"$(nproc)" BUILD="$Q" MARCH="$MARCH" $built
if echo "$progs" | grep -q '/tiles_kept$'; then # the emulator's own check
    mkdir -p "$Q/tests"
    ${CC:-cc} -O2 -Wall -Wextra -Werror tests/emu/tiles_kept.c -o "$Q/tests/tiles_kept"
fi

# ---- 4. the initramfs
I=$E/initrd
rm -rf "$I" && mkdir -p "$I/bin" "$I/proc" "$I/sys" "$I/dev" "$I/work/tests"
cp /bin/busybox "$I/bin/"
for p in $progs; do cp "$p" "$I/work/tests/" && strip "$I/work/tests/${p##*/}"; done
cp -r tests/golden "$I/work/tests/"
for p in $progs; do ldd "$p"; done |
    awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u |
    while read -r so; do
        mkdir -p "$I$(dirname "$so")" && cp -L "$so" "$I$so"
    done
{
    echo '#!/bin/busybox sh'
    echo '/bin/busybox --install -s /bin'
    echo 'export PATH=/bin OMP_WAIT_POLICY=passive'
    echo 'mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev'
    echo 'echo 1 >/proc/sys/kernel/printk' # the kernel's messages off the console
    echo 'echo "== guest: Linux $(uname -r), $(grep -m1 "^model name" /proc/cpuinfo | cut -d: -f2-)"'
    echo 'echo "== guest: flags $(grep -m1 ^flags /proc/cpuinfo | tr " " "\n" | grep -E "^(amx|avx512_bf16)" | tr "\n" " ")"'
    echo 'cd /work'
    for t in $TESTS; do
        echo "echo \"== guest: ${t%%:*} QKV_TEST=${t#*:} at \$(cut -d' ' -f1 /proc/uptime) s\""
        echo "QKV_TEST='${t#*:}' tests/${t%%:*} ||"
        echo "    { echo \"== guest: exit status \$?\"; dmesg | grep -E 'trap|segfault|general protection' | tail -1; }"
    done
    echo 'echo "== guest: end at $(cut -d" " -f1 /proc/uptime) s"'
    echo 'sleep 1; poweroff -f' # the sleep: the serial port's last lines
} >"$I/init"
chmod +x "$I/init"
(cd "$I" && find . | cpio -o -H newc --quiet | gzip -1) >"$E/initrd.gz"

# ---- 5. boot
S=$E/iso
rm -rf "$S" && mkdir -p "$S/isolinux"
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 \
    "$S/isolinux/"
cp "$vmlinuz" "$S/vmlinuz" && cp "$E/initrd.gz" "$S/initrd.gz"
# no5lvl: Bochs cannot return from SMM with CR4.LA57 set; idle=halt: the
# intel_idle driver's TILERELEASE; lsm=capability, nowatchdog, lpj: a
# faster boot; lapic=notscdeadline: the LAPIC timer Bochs emulates well
cat >"$S/isolinux/isolinux.cfg" <<EOF
serial 0 115200
default qkv
prompt 0
timeout 0
label qkv
  kernel /vmlinuz
  append initrd=/initrd.gz console=ttyS0,115200 mitigations=off nokaslr tsc=reliable lpj=1000000 nowatchdog no5lvl lsm=capability lapic=notscdeadline idle=halt
EOF
xorriso -as mkisofs -quiet -o "$E/qkv.iso" -b isolinux/isolinux.bin \
    -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table "$S" 2>/dev/null
cat >"$E/bochsrc" <<EOF
megs: 1024
cpu: model=sapphire_rapids, count=1, ips=100000000, reset_on_triple_fault=0
romimage: file=$R/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=$R/usr/share/vgabios/vgabios.bin
ata0-master: type=cdrom, path=$E/qkv.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$E/serial.log
display_library: nogui
log: $E/bochs.log
clock: sync=none, time0=local
panic: action=fatal
error: action=report
info: action=report
debug: action=ignore
EOF
rm -f "$E/serial.log"
say "booting Linux on Bochs's sapphire_rapids (~8 minutes to the end)"
start=$(date +%s)
rc=0
# Bochs exits with 1 when the guest powers off
timeout "$TIMEOUT" "$B/bochs" -q -f "$E/bochsrc" </dev/null >"$E/bochs.out" 2>&1 || rc=$?
say "Bochs exited with status $rc after $(($(date +%s) - start)) s"

# ---- the guest's results
out=$E/guest.log
tr -d '\r' <"$E/serial.log" | sed -n '/^== guest:/,$p' | grep -v '^\[ *[0-9.]*\] ' >"$out" || true
cat "$out"
passed=$(grep -c '^PASS ' "$out" || true)
# a FAIL line each, or one for a program that exited non-zero without one
failed=$(awk '/^== guest: .* QKV_TEST=/ {f = 0} /^FAIL / {f++; n++}
    /^== guest: exit status/ && !f {n++} END {print n + 0}' "$out")
if grep -q '^SKIP .*amx' "$out"; then
    echo "FAIL emu: an AMX case was skipped: the emulated CPU did not give AMX"
    failed=$((failed + 1))
fi
if ! grep -q '^== guest: end' "$out"; then
    echo "FAIL emu: the guest did not finish (Bochs status $rc; $E/bochs.log, $E/serial.log)"
    failed=$((failed + 1))
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
