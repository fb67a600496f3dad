/* logits.c - qkv from C: the logits of a model on one batch, to compare with
 * another framework (examples/torch_roundtrip.py does, with PyTorch).
 *
 *   logits MODEL.safetensors [CONFIG.json] BATCH.safetensors OUT.safetensors
 *
 * MODEL is a checkpoint (qkv train), a weights file (qkv export) or, with
 * CONFIG.json ({"model": {...}}), a safetensors file of qkv's parameter
 * names written anywhere. BATCH holds token ids as float32 tensors: "tgt_in"
 * (B, T), and "src" (B, S) for an encoder-decoder; ids equal to the model's
 * pad_id are padding. OUT gets "logits" (B, T, V), no dropout. It uses only
 * the installed library:
 *
 *   cc logits.c $(pkg-config --cflags --libs qkv) -o logits
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qkv/checkpoint.h>
#include <qkv/model.h>

/* The ids of tensor name of f, (B, L), with their pad mask; NULL if absent. */
static int32_t *ids_of(const qkv_st_file *f, const char *name, int V, int pad,
                       int *B, int *L, uint8_t **mask) {
    const qkv_st_tensor *t = qkv_st_find(f, name);
    if (!t) return NULL;
    if (t->ndim != 2) {
        fprintf(stderr, "logits: tensor '%s' is not (B, L)\n", name);
        exit(2);
    }
    *B = t->shape[0], *L = t->shape[1];
    int32_t *ids = malloc(t->n * sizeof *ids);
    *mask = malloc(t->n);
    if (!ids || !*mask) exit(2);
    for (size_t i = 0; i < t->n; i++) {
        float x = t->data[i];
        if (!(x >= 0 && x < (float)V) || x != (float)(int)x) {
            fprintf(stderr, "logits: %s[%zu] = %g is not a token id < %d\n",
                    name, i, (double)x, V);
            exit(2);
        }
        ids[i] = (int32_t)x;
        (*mask)[i] = ids[i] == pad;
    }
    return ids;
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: logits MODEL.safetensors [CONFIG.json] "
                        "BATCH.safetensors OUT.safetensors\n");
        return 2;
    }
    const char *config = argc == 5 ? argv[2] : NULL;
    const char *batch = argv[argc - 2], *out = argv[argc - 1];
    char err[512];
    qkv_model m;
    qkv_st_file f;
    qkv_st_error se;
    if (qkv_weights_load(argv[1], config, &m, NULL, err, sizeof err)) {
        fprintf(stderr, "logits: %s\n", err);
        return 2;
    }
    if (qkv_st_read(batch, &f, &se)) {
        fprintf(stderr, "logits: %s\n", se.msg);
        return 2;
    }
    const qkv_model_config *c = &m.cfg;
    qkv_batch b = {0};
    uint8_t *src_pad = NULL, *tgt_pad = NULL;
    int32_t *src = NULL, *tgt;
    int B2 = 0;
    if (c->kind == QKV_MODEL_ENCDEC)
        src = ids_of(&f, "src", c->src_vocab, c->pad_id, &B2, &b.S, &src_pad);
    tgt = ids_of(&f, "tgt_in", c->tgt_vocab, c->pad_id, &b.B, &b.T, &tgt_pad);
    if (!tgt || (c->kind == QKV_MODEL_ENCDEC && (!src || B2 != b.B)) ||
        b.T > c->max_len || b.S > c->max_len) {
        fprintf(stderr,
                "logits: %s: want \"tgt_in\" (B, T) and, for an "
                "encoder-decoder, \"src\" (B, S), T and S at most %d\n",
                batch, c->max_len);
        return 2;
    }
    b.src = src, b.src_pad = src_pad, b.tgt_in = tgt, b.tgt_pad = tgt_pad;
    b.tgt_out = tgt; /* unused by the forward */

    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_graph_set_grad(&g, 0);
    g.training = 0; /* no dropout */
    qkv_tensor *z = qkv_model_forward(&m, &g, &b);
    qkv_st_entry e = {"logits", z->data, 3, {b.B, b.T, c->tgt_vocab}};
    int rc = qkv_st_write(out, &e, 1, NULL, NULL, 0, &se);
    if (rc) fprintf(stderr, "logits: %s\n", se.msg);
    qkv_graph_free(&g);
    qkv_st_free(&f);
    qkv_model_free(&m);
    free(src), free(src_pad), free(tgt), free(tgt_pad);
    return rc ? 2 : 0;
}
