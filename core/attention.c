/* attention.c - masked scaled dot-product attention, fused per (batch, head).
 *
 *   A = softmax(mask(scale * Q K^T)),  Y = A V      (Vaswani et al. 2017, eq.
 * 1)
 *
 * Q: (B,H,T,K), K and V: (B,H,S,K). The forward keeps A (B,H,T,S) for the
 * backward, which then needs only matrix products of the same sizes as the
 * forward: O(T S K) per head, never O(T^2 S):
 *
 *   dV = A^T dY,  dA = dY V^T,  dZ = A * (dA - rowsum(dA * A)) * scale,
 *   dQ = dZ K,    dK = dZ^T Q         (Z the scaled, masked scores)
 *
 * Masks: a key j is hidden from query i when it is padding (key_pad[b, j]) or,
 * with causal on, when j > i + (S - T) (the future; with T < S the queries
 * are the last T positions, as in incremental decoding). A hidden key gets
 * weight exactly 0; a query that sees no key at all gets weights 0 and
 * output 0, never NaN. Heads run in parallel; each writes only its own slices.
 */
#include <math.h>
#include <string.h>

#include "matmul.h"
#include "op_table.h"
#include "ops.h"

/* Turns one (T, S) block of raw scores into attention weights in place. */
static void masked_softmax(float *A, int T, int S, float scale, int causal,
                           const uint8_t *pad /* (S) or NULL */) {
    for (int i = 0; i < T; i++) {
        float *row = A + (size_t)i * S, mx = -INFINITY;
        int last = causal ? i + (S - T) : S - 1; /* last visible key */
        if (last > S - 1) last = S - 1;
        for (int j = 0; j < S; j++) {
            int hidden = j > last || (pad && pad[j]);
            row[j] = hidden ? -INFINITY : row[j] * scale;
            if (row[j] > mx) mx = row[j];
        }
        if (mx == -INFINITY) { /* every key hidden */
            memset(row, 0, (size_t)S * sizeof(float));
            continue;
        }
        float sum = 0.0f;
        for (int j = 0; j < S; j++) sum += row[j] = expf(row[j] - mx);
        float inv = 1.0f / sum;
        for (int j = 0; j < S; j++) row[j] *= inv;
    }
}

qkv_tensor *qkv_attention(qkv_graph *g, qkv_tensor *q, qkv_tensor *k,
                          qkv_tensor *v, const qkv_attn_opts *opts) {
    qkv_attn_opts o = {0};
    if (opts) o = *opts;
    char sq[64], sk[64], sv[64];
    QKV_CHECK(q->ndim == 4 && k->ndim == 4 && qkv_same_shape(k, v) &&
                  q->shape[0] == k->shape[0] && q->shape[1] == k->shape[1] &&
                  q->shape[3] == k->shape[3],
              "attention: need q (B,H,T,K), k and v (B,H,S,K); got q %s, k %s, "
              "v %s",
              qkv_shape_str(q, sq), qkv_shape_str(k, sk), qkv_shape_str(v, sv));
    int B = q->shape[0], H = q->shape[1], T = q->shape[2], S = k->shape[2],
        K = q->shape[3];
    float scale = o.scale != 0.0f ? o.scale : 1.0f / sqrtf((float)K);
    qkv_tensor *y = qkv_tensor_new(g, 4, q->shape);
    size_t ts;
    QKV_CHECK(qkv_mul_size((size_t)T, (size_t)S, &ts) &&
                  qkv_mul_size(ts, (size_t)B * H * sizeof(float), &(size_t){0}),
              "attention: weights (%d,%d,%d,%d) overflow", B, H, T, S);
    float *A = qkv_arena_alloc(&g->arena, (size_t)B * H * ts * sizeof(float));
    const uint8_t *pad = o.key_pad;
    size_t tk = (size_t)T * K, sk_ = (size_t)S * K;

    QKV_OMP(omp parallel for if ((size_t)B * H * ts * K > 65536))
    for (int bh = 0; bh < B * H; bh++) {
        float *Ab = A + bh * ts;
        const float *Qb = q->data + bh * tk, *Kb = k->data + bh * sk_,
                    *Vb = v->data + bh * sk_;
        /* Z = Q K^T: (T,K) x (S,K)^T */
        qkv_sgemm_serial(0, 1, T, S, K, Qb, K, Kb, K, 0, Ab, S);
        masked_softmax(Ab, T, S, scale, o.causal,
                       pad ? pad + (size_t)(bh / H) * S : NULL);
        /* Y = A V: (T,S) x (S,K) */
        qkv_sgemm_serial(0, 0, T, K, S, Ab, S, Vb, K, 0, y->data + bh * tk, K);
    }
    if (o.weights) memcpy(o.weights, A, (size_t)B * H * ts * sizeof(float));

    qkv_node *nd = qkv_record(g, QKV_OP_ATTENTION, y, q, k, v);
    if (nd) {
        nd->s.attention.p = A;
        nd->s.attention.scale = scale;
    }
    return y;
}

void qkv_attention_backward(qkv_graph *g, qkv_node *nd) {
    /* Y = softmax(mask(scale Q K^T)) V  (see the top of this file) */
    qkv_tensor *q = nd->in[0], *k = nd->in[1], *v = nd->in[2], *y = nd->out;
    int B = q->shape[0], H = q->shape[1], T = q->shape[2], S = k->shape[2],
        K = q->shape[3];
    size_t ts = (size_t)T * S, tk = (size_t)T * K, sk = (size_t)S * K;
    const float *A = nd->s.attention.p, *dY = y->grad;
    float scale = nd->s.attention.scale;
    /* Gradients are allocated here, before the threads start. */
    float *dQ = q->requires_grad ? qkv_grad(g, q) : NULL;
    float *dK = k->requires_grad ? qkv_grad(g, k) : NULL;
    float *dV = v->requires_grad ? qkv_grad(g, v) : NULL;
    float *dZ = qkv_arena_alloc(&g->arena, (size_t)B * H * ts * sizeof(float));

    QKV_OMP(omp parallel for if ((size_t)B * H * ts * K > 65536))
    for (int bh = 0; bh < B * H; bh++) {
        const float *Ab = A + bh * ts, *dYb = dY + bh * tk,
                    *Qb = q->data + bh * tk, *Kb = k->data + bh * sk,
                    *Vb = v->data + bh * sk;
        float *dZb = dZ + bh * ts;
        if (dV) /* dV += A^T dY: (S,T) x (T,K) */
            qkv_sgemm_serial(1, 0, S, K, T, Ab, S, dYb, K, 1, dV + bh * sk, K);
        if (!dQ && !dK) continue;
        /* dA = dY V^T: (T,K) x (S,K)^T */
        qkv_sgemm_serial(0, 1, T, S, K, dYb, K, Vb, K, 0, dZb, S);
        /* softmax backward; hidden keys have A = 0, so their dZ is 0 */
        for (int i = 0; i < T; i++) {
            const float *a = Ab + (size_t)i * S;
            float *d = dZb + (size_t)i * S, dot = 0.0f;
            for (int j = 0; j < S; j++) dot += a[j] * d[j];
            for (int j = 0; j < S; j++) d[j] = a[j] * (d[j] - dot) * scale;
        }
        if (dQ) /* dQ += dZ K: (T,S) x (S,K) */
            qkv_sgemm_serial(0, 0, T, K, S, dZb, S, Kb, K, 1, dQ + bh * tk, K);
        if (dK) /* dK += dZ^T Q: (S,T) x (T,K) */
            qkv_sgemm_serial(1, 0, S, K, T, dZb, S, Qb, K, 1, dK + bh * sk, K);
    }
}
