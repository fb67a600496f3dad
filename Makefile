# qkv - build the library, the tests and the programs.
#
#   make               optimised for this machine (-O3 -march=native -fopenmp)
#   make test          build and run every test; ends with "N passed, N failed"
#   make test-amx-emu  the AMX kernel's tests in an emulator (tests/emu/run.sh)
#   make demo          train the copy task and plot its loss (runs/copy/)
#   make demo-text     a character-level language model of a text (runs/text/)
#   make docs          the README's pictures (docs/; ~6 minutes)
#   make bench         training speed against PyTorch, matmul GFLOPS
#   make valgrind      the tests under valgrind (portable build, no AVX-512)
#   make corpora       regenerate data/corpora with data/gen/make_corpora.py
#   make golden        regenerate tests/golden/*.safetensors with PyTorch
#   make fuzz          fuzz the parsers with libFuzzer (FUZZ_S=60: 60 s each)
#   make DEBUG=1 ...   -O0 -g                          (objects in build-debug/)
#   make SAN=1 ...     AddressSanitizer + UBSan        (objects in build-san/)
#   make NATIVE=0      portable code (no -march=native; build-portable/)
#   make MARCH=cpu     code for another CPU (-march=cpu; build-cpu/; bench/amx.sh)
#   make OMP=0         single-threaded, no OpenMP      (build-noomp/)
#   make TEST_QUICK=1  the tests' learning cases train a few steps, assert
#                      no accuracy (tests/test.h QUICK; build-quick/)
#   make BF16_KC=512   bf16 products summed in k blocks of 512, not 256
#                      (core/bf16.h; objects in build-kc512/; bench/amx.sh)
#   make BF16_SKIP_SUMS=1  for timing only: the bf16 products without their
#                      arithmetic (core/bf16.c; build-skipsums/; bench/amx.sh)
#   make CC=clang      clang works as well as gcc (C++ then with clang++;
#                      build-clang/)
# Options combine, and so do their folders' names (make SAN=1 BF16_KC=512:
# build-san-kc512/); BUILD=dir puts the objects in dir instead.

CC      ?= cc
NATIVE  ?= 1
MARCH   ?= native
OMP     ?= 1
DEBUG   ?= 0
SAN     ?= 0
BLAS    ?=

CFLAGS  := -std=c11 -D_POSIX_C_SOURCE=200809L -fno-math-errno -Wall -Wextra -Werror \
           -Wshadow -Wstrict-prototypes -Icore -Inn -Ioptim -Idata
# SentencePiece (--tok spm): data/spm.cc, the one C++ file, is compiled by
# the C++ compiler of CC's family with CC's flags, and the programs link the
# C++ runtime.
LDLIBS  := -lcjson -lsentencepiece_train -lsentencepiece -lstdc++ -lm
ifneq ($(findstring clang,$(CC)),)
  CXX   := $(subst clang,clang++,$(CC))
endif
# UBSan's vptr check needs its C++ runtime, which a C driver does not link.
CXXFLAGS = $(filter-out -std=c11 -Wstrict-prototypes,$(CFLAGS)) -std=c++17 \
           $(if $(findstring -fsanitize,$(CFLAGS)),-fno-sanitize=vptr)
# make fuzz: these warnings and includes, its own optimisation and sanitizers;
# portable code (clang's -Wpsabi: vec.h's 16-wide vectors without AVX-512).
FUZZ_CFLAGS := $(CFLAGS) -Iexamples/cli -O1 -g -fno-omit-frame-pointer -Wno-psabi

# make BLAS=openblas: qkv_sgemm calls OpenBLAS's cblas_sgemm (for comparison;
# apt-get install libopenblas-dev). Results then depend on OpenBLAS's thread
# count; the default build's are bitwise identical for any thread count.
ifeq ($(BLAS),openblas)
  CFLAGS  += -DQKV_OPENBLAS
  LDLIBS  += -lopenblas
else ifneq ($(BLAS),)
  $(error BLAS=$(BLAS): the one optional backend is BLAS=openblas)
endif

# make BF16_KC=n: the bf16 products' k block (core/bf16.h, QKV_BF16_KC), to
# measure what it costs; other bits than the default build's, so its own
# objects.
BF16_KC ?=
ifneq ($(BF16_KC),)
  CFLAGS  += -DQKV_BF16_KC=$(BF16_KC)
endif
# make BF16_SKIP_SUMS=1: the bf16 kernels leave out their k loops (wrong
# results, said on first use), to time what the step costs beside the
# products' arithmetic.
BF16_SKIP_SUMS ?= 0
ifeq ($(BF16_SKIP_SUMS),1)
  CFLAGS  += -DQKV_BF16_SKIP_SUMS
endif

# make TEST_QUICK=1: the tests as in the sanitizer build, learning cases
# cut to a few steps (tests/test.h); make valgrind's, ~50x slower too.
TEST_QUICK ?= 0
ifeq ($(TEST_QUICK),1)
  CFLAGS  += -DQKV_TEST_QUICK
endif

# make MPI=1: the same programs built with Open MPI's mpicc (apt-get install
# openmpi-bin libopenmpi-dev) in build-mpi/, for `mpirun -np K qkv train`
# (data-parallel, core/comm.h). The default build has no MPI.
MPI     ?= 0
ifeq ($(MPI),1)
  CC      := mpicc
  CFLAGS  += -DQKV_MPI
endif

ifeq ($(SAN),1)
  CFLAGS  += -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
             -fno-sanitize-recover=all
  LDFLAGS += -fsanitize=address,undefined
else ifeq ($(DEBUG),1)
  CFLAGS  += -O0 -g
else
  CFLAGS  += -O3 -g
endif
ifeq ($(NATIVE),1)
  CFLAGS  += -march=$(MARCH)
endif
ifeq ($(OMP),1)
  CFLAGS  += -fopenmp
  LDFLAGS += -fopenmp
endif

# make does not track flags, so each set of options that changes the code
# has its own objects: build/ for none, else build-<options>.
VARIANT := $(if $(filter 1,$(SAN)),-san,$(if $(filter 1,$(DEBUG)),-debug))$\
           $(if $(filter 1,$(NATIVE)),$(if $(filter-out native,$(MARCH)),-$(MARCH)),-portable)$\
           $(if $(filter 1,$(OMP)),,-noomp)$(if $(BF16_KC),-kc$(BF16_KC))$\
           $(if $(filter 1,$(BF16_SKIP_SUMS)),-skipsums)$(if $(filter 1,$(TEST_QUICK)),-quick)$\
           $(if $(filter openblas,$(BLAS)),-openblas)$(if $(filter 1,$(MPI)),-mpi)$\
           $(if $(findstring clang,$(CC)),-clang)
BUILD   ?= build$(VARIANT)

# cJSON (checkpoints) and SentencePiece (subword tokens) are the libraries
# qkv needs beyond libc and libm.
ifneq ($(MAKECMDGOALS),clean)
ifeq ($(wildcard /usr/include/cjson/cJSON.h),)
  $(error cJSON is missing: apt-get install libcjson-dev)
endif
ifeq ($(wildcard /usr/include/sentencepiece_trainer.h),)
  $(error SentencePiece is missing: apt-get install libsentencepiece-dev g++)
endif
endif

LIB_SRC   := $(wildcard core/*.c nn/*.c optim/*.c data/*.c)
LIB_CXX   := $(wildcard data/*.cc)
LIB_HDR   := $(wildcard core/*.h nn/*.h optim/*.h data/*.h)
LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/%.o) $(LIB_CXX:%.cc=$(BUILD)/%.o)
LIB       := $(BUILD)/libqkv.a

TEST_SRC  := $(wildcard tests/test_*.c)
TEST_BIN  := $(TEST_SRC:%.c=$(BUILD)/%)
BENCH_BIN := $(BUILD)/tests/bench_matmul $(BUILD)/bench/bench_train
QKV_SRC   := $(wildcard examples/cli/*.c)
QKV_OBJ   := $(QKV_SRC:%.c=$(BUILD)/%.o)
EXAMPLES  := $(patsubst %.c,$(BUILD)/%,$(wildcard examples/*.c)) $(BUILD)/examples/qkv

# The public headers: the library's, less core's internals. Installed as
# PREFIX/include/qkv/*.h (#include <qkv/trainer.h>); the example programs
# build against the same layout staged in $(BUILD)/include.
PUBLIC_HDR := $(filter-out core/op_table.h core/vec.h,$(LIB_HDR))
STAGED_HDR := $(addprefix $(BUILD)/include/qkv/,$(notdir $(PUBLIC_HDR)))
PREFIX    ?= /usr/local
VERSION   := 0.1.0

.PHONY: all test test-amx-emu bench bench-mpi demo docs docs-seeds golden corpora valgrind clean format install uninstall format-check
.SECONDARY:
all: $(LIB) $(TEST_BIN) $(BENCH_BIN) $(EXAMPLES)

# Each object lists the headers it includes (-MMD writes build/X.d beside it),
# so a header change rebuilds only what includes it.
$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/%.o: %.cc
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -MMD -MP -c $< -o $@

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# The qkv program's objects see the library's source tree, as tests do.
$(BUILD)/examples/cli/%.o: examples/cli/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

# The example programs use only the public API, through <qkv/...>.
$(BUILD)/examples/%.o: examples/%.c $(STAGED_HDR)
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -I%,$(CFLAGS)) -I$(BUILD)/include -MMD -MP -c $< -o $@

$(BUILD)/examples/%: $(BUILD)/examples/%.o $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

vpath %.h core nn optim data
$(BUILD)/include/qkv/%.h: %.h
	@mkdir -p $(dir $@)
	cp $< $@

# make install PREFIX=DIR: libqkv.a, the public headers and qkv.pc, so that
#   cc prog.c $(pkg-config --cflags --libs qkv)
# builds a program of one's own (PKG_CONFIG_PATH=DIR/lib/pkgconfig).
install: $(LIB) $(STAGED_HDR)
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include/qkv
	install -m 644 $(LIB) $(DESTDIR)$(PREFIX)/lib/libqkv.a
	install -m 644 $(STAGED_HDR) $(DESTDIR)$(PREFIX)/include/qkv/
	sed -e 's|@PREFIX@|$(PREFIX)|; s|@VERSION@|$(VERSION)|' \
	    -e 's|@LIBS@|$(strip $(LDFLAGS) $(filter-out -lcjson,$(LDLIBS)))|' qkv.pc.in \
	    > $(DESTDIR)$(PREFIX)/lib/pkgconfig/qkv.pc

uninstall:
	rm -rf $(DESTDIR)$(PREFIX)/include/qkv
	rm -f $(DESTDIR)$(PREFIX)/lib/libqkv.a $(DESTDIR)$(PREFIX)/lib/pkgconfig/qkv.pc

# The qkv program: one subcommand per file in examples/cli/.
$(BUILD)/examples/qkv: $(QKV_OBJ) $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# The main job: train the copy task (~10 s), plot its loss curve, decode.
demo: $(BUILD)/examples/qkv
	$(BUILD)/examples/qkv train --task copy --steps 800 --out runs/copy --force
	-$(BUILD)/examples/qkv plot runs/copy --term dumb
	-$(BUILD)/examples/qkv plot runs/copy
	@echo 'qkv decode --ckpt runs/copy/ckpt.safetensors "3 9 4 4 10 2 7 5 8 6"'
	@$(BUILD)/examples/qkv decode --ckpt runs/copy/ckpt.safetensors "3 9 4 4 10 2 7 5 8 6"

# The README's pictures (docs/*.png), made by the commands it documents:
# a loss curve, the N x h sweep on the dates corpus (the README's Table 3
# experiment, ~5 minutes on 2 cores) and attention heatmaps of a grammar model.
QKV := $(BUILD)/examples/qkv
DATES := --data data/corpora/dates/train.tsv --valid data/corpora/dates/valid.tsv --tok char
docs: $(QKV)
	@mkdir -p docs
	$(QKV) train --task copy --steps 800 --out runs/copy --quiet --force
	$(QKV) plot runs/copy -o docs/loss.png --title "qkv train --task copy"
	$(QKV) sweep --N 1,2,4 --h 1,2,4,8,16 $(DATES) --steps 600 --eval-every 300 \
	    --eval-size 1000 --metric val_acc --out runs/table3
	cp runs/table3/heatmap.png docs/sweep-heatmap.png
	cp runs/table3/loss.png docs/sweep-loss.png
	cp runs/table3/sweep.csv docs/table3.csv
	$(QKV) train --data data/corpora/grammar/train.tsv \
	    --valid data/corpora/grammar/valid.tsv --steps 1000 --out runs/grammar --quiet --force
	$(QKV) attn --ckpt runs/grammar/ckpt.safetensors "we see a dog ." -o docs/attn.png

# A character-level language model of the GNU licences shipped in data/text/
# (~4 minutes on 2 cores): it trains with a sample at every validation, its
# loss curve goes to runs/text/loss.png and docs/text-loss.png (the
# README's), then it writes 600 characters of its own.
TEXT_LM := --model decoder --text data/text/gnu-licenses.txt --tok char \
           --block 128 --N 4 --h 4 --d-model 128 --d-ff 512 --dropout 0.1 \
           --batch 32 --lr 2e-3 --steps 2000 --eval-every 200 --eval-size 100
.PHONY: demo-text
demo-text: $(QKV)
	$(QKV) train $(TEXT_LM) --out runs/text --force
	@mkdir -p docs
	-$(QKV) plot runs/text --title "qkv train --text data/text/gnu-licenses.txt --tok char" \
	    && cp runs/text/loss.png docs/text-loss.png
	$(QKV) generate --ckpt runs/text/ckpt.safetensors --max-tokens 600 \
	    --temp 0.8 --seed 1

# With Open MPI's mpicc on the machine, the MPI build (build-mpi/) is made
# too: tests/test_mpi.c runs it under mpirun (it says SKIP without).
# The README's Table 3 over 3 seeds (error bars; ~15 minutes on 2 cores),
# across 2 ranks when the MPI build can be made.
docs-seeds: $(QKV)
	@mkdir -p docs
	if command -v mpicc >/dev/null 2>&1; then \
	    $(MAKE) --no-print-directory MPI=1 BUILD=build-mpi build-mpi/examples/qkv && \
	    mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 build-mpi/examples/qkv sweep \
	        --N 1,2,4 --h 1,2,4,8,16 $(DATES) --steps 600 --eval-every 300 \
	        --eval-size 1000 --metric val_acc --seeds 1,2,3 --out runs/table3-seeds; \
	else $(QKV) sweep --N 1,2,4 --h 1,2,4,8,16 $(DATES) --steps 600 --eval-every 300 \
	        --eval-size 1000 --metric val_acc --seeds 1,2,3 --out runs/table3-seeds; fi
	cp runs/table3-seeds/heatmap.png docs/sweep-heatmap-seeds.png
	cp runs/table3-seeds/sweep.csv docs/table3-seeds.csv

test: $(TEST_BIN) $(EXAMPLES)
	@if command -v mpicc >/dev/null 2>&1; then \
	    $(MAKE) --no-print-directory MPI=1 SAN=0 DEBUG=0 BUILD=build-mpi build-mpi/examples/qkv; fi
	@sh tests/run.sh $(TEST_BIN)

# The AMX kernel's tests on an emulated Sapphire Rapids (Bochs 3.0 and
# Debian's Linux, fetched and built in build-emu/; ~10 minutes the first
# time): for machines without AMX.
test-amx-emu:
	@sh tests/emu/run.sh

# Training speed against PyTorch (when python3-torch is installed) and the
# matmul kernels: bench/run.sh prints the tables.
bench: $(BENCH_BIN)
	@sh bench/run.sh $(BUILD)

# Data-parallel speed on this machine (Open MPI): the gradient all-reduce of
# each bench config with 2 ranks, and a step on 2 ranks x 1 thread against
# 1 process x 2 threads (bench/mpi.sh; needs openmpi-bin libopenmpi-dev).
bench-mpi: $(BUILD)/bench/bench_train
	$(MAKE) --no-print-directory MPI=1 BUILD=build-mpi build-mpi/bench/bench_train
	@sh bench/mpi.sh $(BUILD) build-mpi

# The tests under valgrind (memcheck), built without -march=native (valgrind
# 3.19 cannot decode AVX-512) and with TEST_QUICK=1: at ~50x slower, the full
# learning cases would take hours (test_bf16's alone 5 minutes natively). All
# but test_threads (its timing means nothing here) and test_mpi (its work is
# mpirun's processes, which valgrind does not follow, checked bit for bit
# against the default build's).
VG_BUILD := build-portable-quick
valgrind:
	$(MAKE) NATIVE=0 TEST_QUICK=1 BUILD=$(VG_BUILD) all
	@RUNNER=tests/vg.sh sh tests/run.sh $(patsubst %,$(VG_BUILD)/tests/%,$(filter-out test_threads test_mpi,$(notdir $(TEST_BIN))))

# Regenerates the committed PyTorch golden files (needs Debian's python3-torch).
golden:
	/usr/bin/python3 tests/golden/make_golden.py tests/golden

# Regenerates the shipped toy corpora (data/corpora/*/{train,valid,test}.tsv).
corpora:
	/usr/bin/python3 data/gen/make_corpora.py data/corpora

# libFuzzer harnesses of the parsers of untrusted input (tests/fuzz/README):
# clang with ASan + UBSan (any finding aborts), no OpenMP, in build-fuzz/.
# FUZZ_S=N runs each harness N seconds on a scratch copy of its seeds and
# fails on a crash (saved as build-fuzz/crash-NAME-*); fuzz-seeds remakes the
# seeds with the qkv program.
FUZZ_S     ?= 0
FUZZ_CC    ?= clang
FUZZ_BUILD := build-fuzz
FUZZ_NAMES := ckpt tsv json flags text spm
FUZZ_SAN   := address,undefined -fno-sanitize-recover=all
FUZZ_OBJ   := $(patsubst %.c,$(FUZZ_BUILD)/%.o,$(LIB_SRC) examples/cli/cli.c \
              examples/cli/train.c examples/cli/plot.c) \
              $(LIB_CXX:%.cc=$(FUZZ_BUILD)/%.o)
FUZZ_BIN   := $(FUZZ_NAMES:%=$(FUZZ_BUILD)/fuzz_%)
.PHONY: fuzz fuzz-seeds

fuzz: $(FUZZ_BIN)
	@if [ "$(FUZZ_S)" != 0 ]; then \
	    sh tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_S) $(FUZZ_NAMES); fi

fuzz-seeds: $(BUILD)/examples/qkv
	sh tests/fuzz/make_seeds.sh $(BUILD)/examples/qkv tests/fuzz/corpus

$(FUZZ_BUILD)/%.o: %.c $(LIB_HDR) examples/cli/cli.h tests/fuzz/fuzz.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,$(FUZZ_SAN) -c $< -o $@

$(FUZZ_BUILD)/%.o: %.cc $(LIB_HDR)
	@mkdir -p $(dir $@)
	$(subst clang,clang++,$(FUZZ_CC)) $(filter-out -std=c11 -Wstrict-prototypes,$(FUZZ_CFLAGS)) \
	    -std=c++17 -fsanitize=fuzzer-no-link,$(FUZZ_SAN) -fno-sanitize=vptr -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/tests/fuzz/fuzz_%.o $(FUZZ_OBJ)
	$(FUZZ_CC) -fsanitize=fuzzer,$(FUZZ_SAN) $^ $(filter-out -fopenmp,$(LDLIBS)) -o $@

FORMAT_SRC = $(LIB_SRC) $(LIB_CXX) $(LIB_HDR) tests/*.[ch] tests/fuzz/*.[ch] examples/*.c examples/cli/*.[ch] bench/*.c
format:
	clang-format -i $(FORMAT_SRC)

# Fails, naming file:line, when a file is not as `make format` would leave it.
format-check:
	clang-format --dry-run --Werror $(FORMAT_SRC)

clean:
	rm -rf build build-*
