/* fuzz_ckpt.c - libFuzzer harness of the checkpoint loader. A checkpoint is
 * whatever --ckpt or --resume names: the input, as a file, goes through
 * qkv_st_read alone (any safetensors file: header, offsets, shapes), then
 * qkv_ckpt_load (configs, RNG states, step, optimiser state, the tensors
 * against the config) and, on success, cli_data_from_meta (the settings and
 * vocabularies eval and decode rebuild) and qkv_ckpt_load_weights into the
 * model just built. Each must refuse a bad file with one line, never crash,
 * leak or exit. Seeds: checkpoints written by qkv train (corpus/ckpt/).
 */
#include <stdint.h>

#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > FUZZ_MAX_FILE) return 0;
    const char *path = fuzz_file(data, size);

    qkv_st_file f;
    qkv_st_error se;
    qkv_st_read(path, &f, &se); /* on failure f is empty: freeing is safe */
    qkv_st_free(&f);

    qkv_model m;
    qkv_optim opt;
    int64_t step = 0;
    qkv_pcg32 rng = {0, 1};
    qkv_ckpt_rng rngs[1] = {{"data", &rng}};
    qkv_st_file meta;
    char err[512];
    if (qkv_ckpt_load(path, &m, &opt, &step, rngs, 1, &meta, err, sizeof err))
        return 0;
    cli_data d;
    if (cli_data_from_meta(&d, &meta, err, sizeof err) == 0) cli_data_free(&d);
    if (qkv_ckpt_load_weights(path, &m, err, sizeof err)) {
        fprintf(stderr, "fuzz: it loads but its weights do not: %s\n", err);
        abort();
    }
    qkv_st_free(&meta);
    qkv_model_free(&m);
    if (opt.n) qkv_optim_free(&opt);
    return 0;
}
