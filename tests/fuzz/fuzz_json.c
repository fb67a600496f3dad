/* fuzz_json.c - libFuzzer harness of the JSON a checkpoint or a run folder
 * stores: the input, as one NUL-terminated string, is read as a model config
 * (qkv_model_config_from_json, then qkv_model_declare: names and shapes, no
 * memory), an optimiser config (qkv_optim_config_from_json) and saved
 * settings (cli_flags_from_json_err over a table like qkv train's). Each
 * must refuse bad JSON, a missing, extra or mistyped field and a value out of
 * range with one line, never crash, leak or exit. Checked too: a config or a
 * table that reads writes back to JSON that reads the same. Seeds: configs
 * and config.json of runs of qkv train (corpus/json/).
 */
#include <stdint.h>

#include "fuzz.h"

/* Aborts unless the JSON of c reads back as c. */
static void model_round_trip(const qkv_model_config *c) {
    char *j = qkv_model_config_to_json(c), err[512];
    qkv_model_config back;
    if (qkv_model_config_from_json(j, &back, err, sizeof err) ||
        qkv_model_config_diff(c, &back, 1, err, sizeof err)) {
        fprintf(stderr, "fuzz: model config %s does not read back: %s\n", j,
                err);
        abort();
    }
    free(j);
}

static void optim_round_trip(const qkv_optim_config *c) {
    char *a = qkv_optim_config_to_json(c), err[512];
    qkv_optim_config back;
    char *b = NULL;
    if (qkv_optim_config_from_json(a, &back, err, sizeof err) ||
        strcmp(a, b = qkv_optim_config_to_json(&back)) != 0) {
        fprintf(stderr, "fuzz: optimiser config %s reads back as %s\n", a,
                b ? b : err);
        abort();
    }
    free(a);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1), err[600];
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = 0;

    qkv_model_config mc;
    if (qkv_model_config_from_json(s, &mc, err, sizeof err) == 0) {
        model_round_trip(&mc);
        qkv_model m; /* declared only: a valid config may ask for gigabytes */
        if (qkv_model_declare(&m, &mc, err, sizeof err) == 0)
            qkv_model_free(&m);
    }
    qkv_optim_config oc;
    if (qkv_optim_config_from_json(s, &oc, err, sizeof err) == 0)
        optim_round_trip(&oc);

    flag *flags;
    int n = cli_train_flags(&flags);
    cJSON *j = cJSON_Parse(s);
    if (cli_flags_from_json_err("train", flags, n, j, err, sizeof err) == 0)
        fuzz_flags_round_trip(flags, n);
    cJSON_Delete(j);
    free(s);
    return 0;
}
