/* copy.c - qkv from C: train a Transformer to copy sequences, then decode.
 *
 * The Annotated Transformer's first example: sequences of 10 symbols from a
 * vocabulary of 11 (pad, bos and 9 symbols), an encoder-decoder of 2 + 2
 * layers, 4 heads, d_model 64. It uses only the installed library:
 *
 *   cc copy.c $(pkg-config --cflags --libs qkv) -o copy && ./copy [STEPS]
 */
#include <stdio.h>
#include <stdlib.h>

#include <qkv/decode.h>
#include <qkv/eval.h>
#include <qkv/source.h>
#include <qkv/trainer.h>

int main(int argc, char **argv) {
    /* the data: fresh random sequences every step, y = x */
    qkv_task task = {QKV_TASK_COPY, 11, 10, 10, 0, 0};
    qkv_source *train = qkv_task_source(&task, 64, 42, 0);
    qkv_source *valid = qkv_task_source(&task, 200, 42, 1);

    /* the model */
    qkv_model_config cfg = qkv_model_defaults(QKV_MODEL_ENCDEC);
    cfg.src_vocab = cfg.tgt_vocab = task.vocab;
    cfg.d_model = 64, cfg.heads = 4, cfg.d_ff = 128;
    cfg.n_enc = cfg.n_dec = 2;
    cfg.max_len = 22;
    cfg.dropout = 0.0f;
    qkv_model m;
    char err[512];
    if (qkv_model_init(&m, &cfg, 42, err, sizeof err)) {
        fprintf(stderr, "copy: %s\n", err);
        return 1;
    }

    /* Adam, warm-up then cosine decay, clipping at 1 */
    int steps = argc > 1 ? atoi(argv[1]) : 600;
    qkv_trainer_config tc = qkv_trainer_defaults(QKV_OPTIM_ADAM, 2e-3f);
    int warm = steps < 100 ? steps : 100;
    tc.schedule =
        (qkv_schedule){QKV_SCHEDULE_COSINE, 2e-3f, warm, steps, 1e-4f, 0};
    qkv_trainer t;
    qkv_trainer_init(&t, &m, &tc);

    qkv_eval_opts eo = {.eos = -1, .beam = 1}; /* no eos: 10 long */
    for (int step = 1; step <= steps; step++) {
        qkv_trainer_step(&t, qkv_source_next(train));
        if (step % 100 == 0 || step == steps) {
            qkv_scores s;
            qkv_evaluate(&t.model, &t.graph, valid, &eo, &s);
            printf("step %4d  loss %.4f  val loss %.4f  exact match %5.1f%%\n",
                   step, (double)t.loss, qkv_scores_loss(&s),
                   100 * qkv_scores_exact(&s));
        }
    }

    /* greedy decoding of one sequence */
    int32_t src[10] = {3, 9, 4, 4, 10, 2, 7, 5, 8, 6}, out[10];
    qkv_greedy(&t.model, &t.graph, src, NULL, 1, 10, QKV_BOS, -1, 10, out);
    printf("in: ");
    for (int i = 0; i < 10; i++) printf(" %d", src[i]);
    printf("\nout:");
    for (int i = 0; i < 10; i++) printf(" %d", out[i]);
    printf("\n");

    qkv_source_free(train);
    qkv_source_free(valid);
    qkv_trainer_free(&t);
    return 0;
}
