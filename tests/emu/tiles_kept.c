/* tests/emu/tiles_kept.c - the emulator's own check, run in the guest by
 * tests/emu/run.sh: does a process's AMX tile data survive context
 * switches? Two processes on the one emulated CPU each load a tile with
 * their own values, yield to each other 300 times (each switch saves one
 * process's tiles with XSAVES and restores the other's with XRSTORS),
 * then store the tile and compare. Bochs 3.0 as released lost them all
 * (tests/emu/bochs-3.0.patch, item 3). Prints a PASS or FAIL line as
 * tests/test.h does. */
#define _GNU_SOURCE
#include <immintrin.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* elements of a tile loaded with values from id that came back different */
__attribute__((target("amx-tile"))) static int keep(int id) {
    static _Alignas(64) uint8_t cfg[64];
    static float in[16][16], out[16][16];
    cfg[0] = 1;   /* palette 1 */
    cfg[16] = 64; /* tile 0: 64 bytes a row, */
    cfg[48] = 16; /* 16 rows */
    _tile_loadconfig(cfg);
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) in[i][j] = (float)(id * 1000 + i * 16 + j);
    _tile_loadd(0, in, 64);
    for (int k = 0; k < 300; k++) sched_yield();
    _tile_stored(0, out, 64);
    _tile_release();
    int bad = 0;
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) bad += out[i][j] != in[i][j];
    return bad;
}

int main(void) {
    /* Linux's permission for the tile data (ARCH_REQ_XCOMP_PERM, 18) */
    if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) {
        printf("FAIL emu/tiles_kept_across_context_switches: arch_prctl "
               "refused the tile data\n");
        return 1;
    }
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) _exit(keep(2) != 0);
    int bad = keep(1), status = 0;
    waitpid(child, &status, 0);
    int child_bad = !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    if (bad || child_bad) {
        printf("FAIL emu/tiles_kept_across_context_switches: %d of 256 "
               "elements lost in one process%s\n",
               bad, child_bad ? ", and some in the other" : "");
        return 1;
    }
    printf("PASS emu/tiles_kept_across_context_switches\n");
    return 0;
}
