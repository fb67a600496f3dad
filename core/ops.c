/* ops.c - forward and backward of every op but attention (attention.c).
 *
 * Layout of each op: the forward (public, checks shapes, computes, records a
 * node) and right below it the backward, qkv_<op>_backward (declared only in
 * the internal op_table.h; starts with the forward line it differentiates,
 * accumulates into the inputs' gradients). The op table at the end, generated
 * from QKV_OPS (tape.h), ties the qkv_op enum to the backwards and their
 * names.
 *
 * Threads: loops split independent rows/elements only; every reduction runs in
 * a fixed order, so results are bitwise identical for any thread count.
 */
#include "ops.h"

#include <math.h>
#include <string.h>

#include "bf16.h"
#include "matmul.h"
#include "op_table.h"
#include "vec.h"

/* Elementwise loops go parallel above this many elements. */
#define PAR_MIN 32768

/* Output tensor of the given shape from the arena. */
static qkv_tensor *new_like(qkv_graph *g, const qkv_tensor *x) {
    return qkv_tensor_new(g, x->ndim, x->shape);
}

/* Wants a gradient for input t of this node? */
static int wants(const qkv_tensor *t) {
    return t && t->requires_grad;
}

/* ---------------------------------------------------------------- matmul */

/* Shapes of one matmul: batch matrices, each op(A) M x K times op(B) K x N. */
typedef struct mm_dims {
    int M, N, K;
    size_t batch; /* matrices in a (1 when flattened) */
    int b_shared; /* b is one matrix used by every batch element */
} mm_dims;

static mm_dims mm_shapes(const qkv_tensor *a, const qkv_tensor *b, int ta,
                         int tb) {
    char sa[64], sb[64];
    QKV_CHECK(a->ndim >= 2 && b->ndim >= 2,
              "matmul: operands need >= 2 dims, got a %s, b %s",
              qkv_shape_str(a, sa), qkv_shape_str(b, sb));
    mm_dims d;
    int ar = a->shape[a->ndim - 2], ac = a->shape[a->ndim - 1];
    int br = b->shape[b->ndim - 2], bc = b->shape[b->ndim - 1];
    d.M = ta ? ac : ar;
    d.K = ta ? ar : ac;
    d.N = tb ? br : bc;
    int kb = tb ? bc : br;
    QKV_CHECK(d.K == kb,
              "matmul: inner dims differ: a %s%s x b %s%s (%d vs %d)",
              qkv_shape_str(a, sa), ta ? "^T" : "", qkv_shape_str(b, sb),
              tb ? "^T" : "", d.K, kb);
    d.b_shared = b->ndim == 2;
    if (!d.b_shared) {
        int same = a->ndim == b->ndim;
        for (int i = 0; same && i < a->ndim - 2; i++)
            same = a->shape[i] == b->shape[i];
        QKV_CHECK(same,
                  "matmul: batch dims differ: a %s, b %s (b must be 2-D or "
                  "have a's leading dims)",
                  qkv_shape_str(a, sa), qkv_shape_str(b, sb));
    }
    d.batch = 1;
    for (int i = 0; i < a->ndim - 2; i++) d.batch *= (size_t)a->shape[i];
    /* A shared B and untransposed A: the batch is one tall matrix. */
    if (d.b_shared && !ta && d.batch > 1) {
        QKV_CHECK((size_t)d.M * d.batch <= INT32_MAX,
                  "matmul: a %s has too many rows", qkv_shape_str(a, sa));
        d.M = (int)((size_t)d.M * d.batch);
        d.batch = 1;
    }
    return d;
}

static qkv_tensor *matmul_to(qkv_graph *g, qkv_tensor *a, qkv_tensor *b, int ta,
                             int tb, int relu);

/* qkv_sgemm, or qkv_gemm_bf16 when the graph computes in bf16; there a
 * parameter as B (a weight: t, else NULL) is packed once per version of the
 * parameters (qkv_params_packed), not once per product. relu: C = max(the
 * product, 0), stored by the kernel (acc is then 0). */
static void gemm(const qkv_graph *g, int ta, int tb, int M, int N, int K,
                 const float *A, int lda, const float *B, int ldb,
                 const qkv_tensor *t, int acc, int relu, float *C, int ldc) {
    if (g->precision != QKV_BF16) {
        if (relu)
            qkv_sgemm_relu(ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
        else
            qkv_sgemm(ta, tb, M, N, K, A, lda, B, ldb, acc, C, ldc);
    } else if (t && t->owner) {
        const qkv_bf16_packed *p =
            qkv_params_packed(t->owner, B, tb, K, N, ldb);
        if (relu)
            qkv_gemm_bf16_packed_relu(ta, M, A, lda, p, C, ldc);
        else
            qkv_gemm_bf16_packed(ta, M, A, lda, p, acc, C, ldc);
    } else if (relu) {
        qkv_gemm_bf16_relu(ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
    } else {
        qkv_gemm_bf16(ta, tb, M, N, K, A, lda, B, ldb, acc, C, ldc);
    }
}

qkv_tensor *qkv_matmul(qkv_graph *g, qkv_tensor *a, qkv_tensor *b, int ta,
                       int tb) {
    return matmul_to(g, a, b, ta, tb, 0);
}

static qkv_tensor *relu_to(qkv_graph *g, qkv_tensor *x, qkv_tensor *y,
                           int done);

qkv_tensor *qkv_matmul_relu(qkv_graph *g, qkv_tensor *a, qkv_tensor *b, int ta,
                            int tb) {
    qkv_tensor *z = matmul_to(g, a, b, ta, tb, 1);
    return relu_to(g, z, qkv_tensor_wrap(g, z->data, z->ndim, z->shape), 1);
}

/* relu: the kernel stores max(., 0); the matmul node is recorded as if
 * relu_inplace overwrote its output afterwards (its backward never reads
 * it). */
static qkv_tensor *matmul_to(qkv_graph *g, qkv_tensor *a, qkv_tensor *b, int ta,
                             int tb, int relu) {
    mm_dims d = mm_shapes(a, b, ta, tb);
    int shape[QKV_MAX_DIMS];
    for (int i = 0; i < a->ndim - 2; i++) shape[i] = a->shape[i];
    shape[a->ndim - 2] = ta ? a->shape[a->ndim - 1] : a->shape[a->ndim - 2];
    shape[a->ndim - 1] = d.N;
    qkv_tensor *y = qkv_tensor_new(g, a->ndim, shape);
    size_t sa = (size_t)d.M * d.K, sb = d.b_shared ? 0 : (size_t)d.K * d.N,
           sy = (size_t)d.M * d.N;
    int lda = ta ? d.M : d.K, ldb = tb ? d.K : d.N;
    for (size_t i = 0; i < d.batch; i++) {
        const float *ai = a->data + i * sa, *bi = b->data + i * sb;
        float *yi = y->data + i * sy;
        gemm(g, ta, tb, d.M, d.N, d.K, ai, lda, bi, ldb, d.b_shared ? b : NULL,
             0, relu, yi, d.N);
    }
    qkv_node *nd = qkv_record(g, QKV_OP_MATMUL, y, a, b, NULL);
    if (nd) {
        nd->s.matmul.ta = ta;
        nd->s.matmul.tb = tb;
    }
    return y;
}

void qkv_matmul_backward(qkv_graph *g, qkv_node *nd) {
    /* C = op(A) op(B);  dA += dC op(B)^T (shaped as A),  dB += op(A)^T dC */
    qkv_tensor *a = nd->in[0], *b = nd->in[1], *c = nd->out;
    int ta = nd->s.matmul.ta, tb = nd->s.matmul.tb;
    mm_dims d = mm_shapes(a, b, ta, tb);
    int M = d.M, N = d.N, K = d.K;
    size_t sa = (size_t)M * K, sb = d.b_shared ? 0 : (size_t)K * N,
           sc = (size_t)M * N;
    const float *dC = c->grad;
    int acc;
    if (wants(a)) {
        float *dA = qkv_grad_write(g, a, &acc);
        for (size_t i = 0; i < d.batch; i++) {
            const float *B = b->data + i * sb, *G = dC + i * sc;
            float *dAi = dA + i * sa;
            const qkv_tensor *w = d.b_shared ? b : NULL;
            if (!ta && !tb) /* A (M,K) += dC (M,N) B^T, B (K,N) */
                gemm(g, 0, 1, M, K, N, G, N, B, N, w, acc, 0, dAi, K);
            else if (!ta && tb) /* A (M,K) += dC B, B (N,K) */
                gemm(g, 0, 0, M, K, N, G, N, B, K, w, acc, 0, dAi, K);
            else if (ta && !tb) /* A (K,M) += B dC^T, B (K,N) */
                gemm(g, 0, 1, K, M, N, B, N, G, N, NULL, acc, 0, dAi, M);
            else /* A (K,M) += B^T dC^T, B (N,K) */
                gemm(g, 1, 1, K, M, N, B, K, G, N, NULL, acc, 0, dAi, M);
        }
    }
    if (wants(b)) {
        float *dB = qkv_grad_write(g, b, &acc);
        /* A shared B sums every batch element's contribution, in batch order.
         */
        for (size_t i = 0; i < d.batch; i++) {
            const float *A = a->data + i * sa, *G = dC + i * sc;
            float *dBi = dB + i * sb;
            int add = acc || (d.b_shared && i > 0);
            if (!ta && !tb) /* B (K,N) += A^T dC, A (M,K) */
                gemm(g, 1, 0, K, N, M, A, K, G, N, NULL, add, 0, dBi, N);
            else if (!ta && tb) /* B (N,K) += dC^T A */
                gemm(g, 1, 0, N, K, M, G, N, A, K, NULL, add, 0, dBi, K);
            else if (ta && !tb) /* B (K,N) += A dC, A (K,M) */
                gemm(g, 0, 0, K, N, M, A, M, G, N, NULL, add, 0, dBi, N);
            else /* B (N,K) += dC^T A^T */
                gemm(g, 1, 1, N, K, M, G, N, A, M, NULL, add, 0, dBi, K);
        }
    }
}

/* ------------------------------------------------------------- add, mul */

/* b must have a's shape or a's trailing dims; returns b's period in a. */
static size_t bcast_period(const char *op, const qkv_tensor *a,
                           const qkv_tensor *b) {
    char sa[64], sb[64];
    int ok = b->ndim <= a->ndim;
    for (int i = 0; ok && i < b->ndim; i++)
        ok = b->shape[b->ndim - 1 - i] == a->shape[a->ndim - 1 - i];
    QKV_CHECK(ok,
              "%s: shapes do not broadcast: a %s, b %s (b must be a's "
              "shape or a's trailing dims)",
              op, qkv_shape_str(a, sa), qkv_shape_str(b, sb));
    return b->n;
}

qkv_tensor *qkv_add(qkv_graph *g, qkv_tensor *a, qkv_tensor *b) {
    size_t nb = bcast_period("add", a, b), n = a->n;
    qkv_tensor *y = new_like(g, a);
    if (nb == n) {
        QKV_OMP(omp parallel for if (n > PAR_MIN))
        for (size_t i = 0; i < n; i++) y->data[i] = a->data[i] + b->data[i];
    } else if (nb > 0) {
        QKV_OMP(omp parallel for if (n > PAR_MIN))
        for (size_t r = 0; r < n / nb; r++)
            for (size_t j = 0; j < nb; j++)
                y->data[r * nb + j] = a->data[r * nb + j] + b->data[j];
    }
    qkv_record(g, QKV_OP_ADD, y, a, b, NULL);
    return y;
}

/* Sums the rows of dy (n / nb rows of nb) into db, in row order. */
static void sum_rows_into(float *db, const float *dy, size_t n, size_t nb) {
    for (size_t r = 0; r < n / nb; r++)
        for (size_t j = 0; j < nb; j++) db[j] += dy[r * nb + j];
}

void qkv_add_backward(qkv_graph *g, qkv_node *nd) {
    /* y = a + b;  da += dy,  db += dy summed over the broadcast dims */
    qkv_tensor *a = nd->in[0], *b = nd->in[1];
    const float *dy = nd->out->grad;
    size_t n = a->n;
    int acc;
    if (wants(a)) {
        float *da = qkv_grad_write(g, a, &acc);
        QKV_OMP(omp parallel for if (n > PAR_MIN))
        for (size_t i = 0; i < n; i++) da[i] = (acc ? da[i] : 0.0f) + dy[i];
    }
    if (wants(b) && b->n) sum_rows_into(qkv_grad(g, b), dy, n, b->n);
}

qkv_tensor *qkv_mul(qkv_graph *g, qkv_tensor *a, qkv_tensor *b) {
    size_t nb = bcast_period("mul", a, b), n = a->n;
    qkv_tensor *y = new_like(g, a);
    QKV_OMP(omp parallel for if (n > PAR_MIN))
    for (size_t i = 0; i < n; i++) y->data[i] = a->data[i] * b->data[i % nb];
    qkv_record(g, QKV_OP_MUL, y, a, b, NULL);
    return y;
}

void qkv_mul_backward(qkv_graph *g, qkv_node *nd) {
    /* y = a * b;  da += dy * b,  db += dy * a (summed over broadcast dims) */
    qkv_tensor *a = nd->in[0], *b = nd->in[1];
    const float *dy = nd->out->grad;
    size_t n = a->n, nb = b->n;
    if (wants(a)) {
        int acc;
        float *da = qkv_grad_write(g, a, &acc);
        QKV_OMP(omp parallel for if (n > PAR_MIN))
        for (size_t i = 0; i < n; i++)
            da[i] = (acc ? da[i] : 0.0f) + dy[i] * b->data[i % nb];
    }
    if (wants(b)) {
        float *db = qkv_grad(g, b);
        for (size_t r = 0; r < n / nb; r++)
            for (size_t j = 0; j < nb; j++)
                db[j] += dy[r * nb + j] * a->data[r * nb + j];
    }
}

/* -------------------------------------------------- scale, relu, gelu */

qkv_tensor *qkv_scale(qkv_graph *g, qkv_tensor *x, float s) {
    qkv_tensor *y = new_like(g, x);
    size_t n = x->n;
    QKV_OMP(omp parallel for if (n > PAR_MIN))
    for (size_t i = 0; i < n; i++) y->data[i] = s * x->data[i];
    qkv_node *nd = qkv_record(g, QKV_OP_SCALE, y, x, NULL, NULL);
    if (nd) nd->s.scale.s = s;
    return y;
}

void qkv_scale_backward(qkv_graph *g, qkv_node *nd) {
    /* y = s x;  dx += s dy */
    const float *dy = nd->out->grad;
    int acc;
    float *dx = qkv_grad_write_over(g, nd, nd->in[0], &acc), s = nd->s.scale.s;
    size_t n = nd->out->n;
    QKV_OMP(omp parallel for if (n > PAR_MIN))
    for (size_t i = 0; i < n; i++) dx[i] = (acc ? dx[i] : 0.0f) + s * dy[i];
}

/* y (possibly x itself) = max(x, 0); done: y already holds it */
static qkv_tensor *relu_to(qkv_graph *g, qkv_tensor *x, qkv_tensor *y,
                           int done) {
    size_t n = x->n;
    if (!done) {
        QKV_OMP(omp parallel for if (n > PAR_MIN))
        for (size_t i = 0; i < n; i++)
            y->data[i] = x->data[i] > 0 ? x->data[i] : 0;
    }
    qkv_record(g, QKV_OP_RELU, y, x, NULL, NULL);
    return y;
}

qkv_tensor *qkv_relu(qkv_graph *g, qkv_tensor *x) {
    return relu_to(g, x, new_like(g, x), 0);
}

qkv_tensor *qkv_relu_inplace(qkv_graph *g, qkv_tensor *x) {
    return relu_to(g, x, qkv_tensor_wrap(g, x->data, x->ndim, x->shape), 0);
}

void qkv_relu_backward(qkv_graph *g, qkv_node *nd) {
    /* y = max(x, 0);  dx += dy where x > 0, i.e. where y > 0: the output
     * alone decides, so the input may have been overwritten (in place) */
    const float *x = nd->out->data, *dy = nd->out->grad;
    int acc;
    float *dx = qkv_grad_write_over(g, nd, nd->in[0], &acc);
    size_t n = nd->out->n;
    QKV_OMP(omp parallel for if (n > PAR_MIN))
    for (size_t i = 0; i < n; i++)
        dx[i] = (acc ? dx[i] : 0.0f) + (x[i] > 0 ? dy[i] : 0.0f);
}

qkv_tensor *qkv_gelu(qkv_graph *g, qkv_tensor *x) {
    qkv_tensor *y = new_like(g, x);
    size_t n = x->n;
    QKV_OMP(omp parallel for if (n > PAR_MIN / 8))
    for (size_t i = 0; i < n; i++) {
        float v = x->data[i];
        y->data[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
    qkv_record(g, QKV_OP_GELU, y, x, NULL, NULL);
    return y;
}

void qkv_gelu_backward(qkv_graph *g, qkv_node *nd) {
    /* y = x Phi(x);  dx += dy (Phi(x) + x phi(x)), phi the normal density */
    const float *x = nd->in[0]->data, *dy = nd->out->grad;
    int acc;
    float *dx = qkv_grad_write_over(g, nd, nd->in[0], &acc);
    size_t n = nd->out->n;
    const float inv_sqrt_2pi = 0.3989422804014327f;
    QKV_OMP(omp parallel for if (n > PAR_MIN / 8))
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
        float pdf = inv_sqrt_2pi * expf(-0.5f * v * v);
        dx[i] = (acc ? dx[i] : 0.0f) + dy[i] * (cdf + v * pdf);
    }
}

/* ---------------------------------------------------------------- dropout */

qkv_tensor *qkv_dropout(qkv_graph *g, qkv_tensor *x, float p, qkv_pcg32 *rng) {
    QKV_CHECK(p >= 0.0f && p < 1.0f, "dropout: p = %g is not in [0, 1)",
              (double)p);
    if (!g->training || p == 0.0f) return x;
    QKV_CHECK(rng, "dropout: training with p = %g needs an rng", (double)p);
    qkv_tensor *y = new_like(g, x);
    float *mask = qkv_arena_alloc(&g->arena, x->n * sizeof(float));
    float keep = 1.0f / (1.0f - p);
    /* Drawn in order on one thread: the mask depends only on the rng state. */
    for (size_t i = 0; i < x->n; i++) {
        mask[i] = qkv_pcg32_float(rng) < p ? 0.0f : keep;
        y->data[i] = x->data[i] * mask[i];
    }
    qkv_node *nd = qkv_record(g, QKV_OP_DROPOUT, y, x, NULL, NULL);
    if (nd) nd->s.dropout.mask = mask;
    return y;
}

void qkv_dropout_backward(qkv_graph *g, qkv_node *nd) {
    /* y = x * mask;  dx += dy * mask */
    const float *m = nd->s.dropout.mask, *dy = nd->out->grad;
    int acc;
    float *dx = qkv_grad_write_over(g, nd, nd->in[0], &acc);
    for (size_t i = 0; i < nd->out->n; i++)
        dx[i] = (acc ? dx[i] : 0.0f) + dy[i] * m[i];
}

/* ---------------------------------------------------------------- softmax */

qkv_tensor *qkv_softmax(qkv_graph *g, qkv_tensor *x) {
    qkv_tensor *y = new_like(g, x);
    size_t rows = qkv_tensor_rows(x);
    int C = qkv_tensor_cols(x);
    QKV_OMP(omp parallel for if (x->n > PAR_MIN / 4))
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x->data + r * C;
        float *yr = y->data + r * C, mx = qkv_vmax(xr, C);
        float sum = qkv_vexp_sum(yr, xr, mx, C);
        for (int j = 0; j < C; j++) yr[j] /= sum;
    }
    qkv_record(g, QKV_OP_SOFTMAX, y, x, NULL, NULL);
    return y;
}

void qkv_softmax_backward(qkv_graph *g, qkv_node *nd) {
    /* y = softmax(x);  dx += y * (dy - sum_j dy_j y_j) */
    const float *y = nd->out->data, *dy = nd->out->grad;
    int acc;
    float *dx = qkv_grad_write(g, nd->in[0], &acc);
    size_t rows = qkv_tensor_rows(nd->out);
    int C = qkv_tensor_cols(nd->out);
    QKV_OMP(omp parallel for if (nd->out->n > PAR_MIN / 4))
    for (size_t r = 0; r < rows; r++) {
        const float *yr = y + r * C, *gr = dy + r * C;
        float dot = qkv_vdot(gr, yr, C);
        float *d = dx + r * C;
        for (int j = 0; j < C; j++)
            d[j] = (acc ? d[j] : 0.0f) + yr[j] * (gr[j] - dot);
    }
}

/* -------------------------------------------------------------- layernorm */

static void layernorm_check(const char *op, const qkv_tensor *x,
                            const qkv_tensor *gamma, const qkv_tensor *beta,
                            float eps) {
    int D = qkv_tensor_cols(x);
    char sx[64], sg[64], sb[64];
    QKV_CHECK(gamma->n == (size_t)D && beta->n == (size_t)D,
              "%s: x %s needs gamma and beta of (%d), got %s and %s", op,
              qkv_shape_str(x, sx), D, qkv_shape_str(gamma, sg),
              qkv_shape_str(beta, sb));
    QKV_CHECK(eps >= 0.0f, "%s: eps = %g is negative", op, (double)eps);
}

/* One row: y = (x - m) * s * gamma + beta, s = 1 / sqrt(var + eps). */
static void layernorm_row(const float *xr, float *yr, const float *gamma,
                          const float *beta, int D, float eps, float *mean,
                          float *rstd) {
    float m = qkv_vsum(xr, D) / (float)D;
    float s = 1.0f / sqrtf(qkv_vsqdev(xr, m, D) / (float)D + eps);
    for (int j = 0; j < D; j++) yr[j] = (xr[j] - m) * s * gamma[j] + beta[j];
    *mean = m;
    *rstd = s;
}

/* Forward of layernorm (x = a) and add_layernorm (x = a + b, summed into
 * y's row and normalised there; the backward adds it again rather than
 * keeping a (rows, D) copy: 2 MiB a call on base, read from memory either
 * way). */
static qkv_tensor *layernorm_forward(qkv_graph *g, qkv_op op, qkv_tensor *a,
                                     qkv_tensor *b, qkv_tensor *gamma,
                                     qkv_tensor *beta, float eps) {
    int D = qkv_tensor_cols(a);
    size_t rows = qkv_tensor_rows(a);
    qkv_tensor *y = new_like(g, a);
    float *mean = qkv_arena_alloc(&g->arena, rows * sizeof(float));
    float *rstd = qkv_arena_alloc(&g->arena, rows * sizeof(float));
    QKV_OMP(omp parallel for if (a->n > PAR_MIN / 4))
    for (size_t r = 0; r < rows; r++) {
        const float *xr = a->data + r * D;
        float *yr = y->data + r * D;
        if (b) {
            for (int j = 0; j < D; j++) yr[j] = xr[j] + b->data[r * D + j];
            xr = yr;
        }
        layernorm_row(xr, yr, gamma->data, beta->data, D, eps, &mean[r],
                      &rstd[r]);
    }
    qkv_node *nd = qkv_record4(g, op, y, a, b ? b : gamma, b ? gamma : beta,
                               b ? beta : NULL);
    if (nd) {
        nd->s.layernorm.mean = mean;
        nd->s.layernorm.rstd = rstd;
    }
    return y;
}

qkv_tensor *qkv_layernorm(qkv_graph *g, qkv_tensor *x, qkv_tensor *gamma,
                          qkv_tensor *beta, float eps) {
    layernorm_check("layernorm", x, gamma, beta, eps);
    return layernorm_forward(g, QKV_OP_LAYERNORM, x, NULL, gamma, beta, eps);
}

qkv_tensor *qkv_add_layernorm(qkv_graph *g, qkv_tensor *a, qkv_tensor *b,
                              qkv_tensor *gamma, qkv_tensor *beta, float eps) {
    char sa[64], sb[64];
    QKV_CHECK(qkv_same_shape(a, b), "add_layernorm: a %s and b %s differ",
              qkv_shape_str(a, sa), qkv_shape_str(b, sb));
    layernorm_check("add_layernorm", a, gamma, beta, eps);
    return layernorm_forward(g, QKV_OP_ADD_LAYERNORM, a, b, gamma, beta, eps);
}

/* Rows per partial sum of dgamma and dbeta: fixed, so the sums do not
 * depend on the thread count. */
#define LN_CHUNK 64

void qkv_layernorm_backward(qkv_graph *g, qkv_node *nd) {
    /* y = xhat * gamma + beta, xhat = (x - mean) * rstd;
     * dx += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),
     * dxhat = dy * gamma;  dgamma += sum_rows dy * xhat;  dbeta += sum_rows dy
     * add_layernorm: x = a + b, and da += dx, db += dx. */
    int fused = nd->op == QKV_OP_ADD_LAYERNORM;
    qkv_tensor *a = nd->in[0], *b = fused ? nd->in[1] : NULL;
    qkv_tensor *gamma = nd->in[1 + fused], *beta = nd->in[2 + fused];
    const float *dy = nd->out->grad, *mean = nd->s.layernorm.mean,
                *rstd = nd->s.layernorm.rstd, *gm = gamma->data;
    int D = qkv_tensor_cols(a);
    size_t rows = qkv_tensor_rows(a), chunks = (rows + LN_CHUNK - 1) / LN_CHUNK;
    /* One pass over the rows writes both inputs' gradients and, per chunk of
     * rows, partial sums of dgamma and dbeta, added in chunk order after.
     * For a == b the second write adds to the first, as add's backward
     * would. */
    int acc_a = 0, acc_b = 0;
    float *da = wants(a) ? qkv_grad_write(g, a, &acc_a) : NULL;
    float *db = b && wants(b) ? qkv_grad_write(g, b, &acc_b) : NULL;
    int params = wants(gamma) || wants(beta);
    if (!da && !db && !params) return;
    /* per chunk: [dgamma part | dbeta part | a row + b row] */
    size_t per = (size_t)(params ? 2 : 0) * D + (size_t)(b ? D : 0);
    float *scratch =
        per ? qkv_arena_alloc(&g->arena, chunks * per * sizeof(float)) : NULL;
    QKV_OMP(omp parallel for if (a->n > PAR_MIN / 4))
    for (size_t c = 0; c < chunks; c++) {
        float *pg = params ? scratch + c * per : NULL, *pb = pg ? pg + D : NULL;
        float *sum = b ? scratch + c * per + (params ? 2 * D : 0) : NULL;
        if (pg) memset(pg, 0, 2 * (size_t)D * sizeof(float));
        size_t r1 = (c + 1) * LN_CHUNK < rows ? (c + 1) * LN_CHUNK : rows;
        for (size_t r = c * LN_CHUNK; r < r1; r++) {
            const float *xr = a->data + r * D, *gr = dy + r * D;
            if (b) {
                for (int j = 0; j < D; j++) sum[j] = xr[j] + b->data[r * D + j];
                xr = sum;
            }
            float m = mean[r], s = rstd[r];
            if (pg)
                for (int j = 0; j < D; j++) {
                    pg[j] += gr[j] * (xr[j] - m) * s;
                    pb[j] += gr[j];
                }
            if (!da && !db) continue;
            float m1 = qkv_vdot(gr, gm, D) / (float)D;
            float m2 = qkv_vdot3(gr, gm, xr, m, D) * s / (float)D;
            float *dar = da ? da + r * D : NULL, *dbr = db ? db + r * D : NULL;
            for (int j = 0; j < D; j++) {
                float v = s * (gr[j] * gm[j] - m1 - (xr[j] - m) * s * m2);
                if (dar) dar[j] = (acc_a ? dar[j] : 0.0f) + v;
                if (dbr) dbr[j] = (acc_b ? dbr[j] : 0.0f) + v;
            }
        }
    }
    if (params) {
        float *dg = qkv_grad(g, gamma), *dbt = qkv_grad(g, beta);
        for (int j = 0; j < D; j++) {
            float sg = 0.0f, sb = 0.0f;
            for (size_t c = 0; c < chunks; c++) {
                sg += scratch[c * per + j];
                sb += scratch[c * per + D + j];
            }
            dg[j] += sg;
            dbt[j] += sb;
        }
    }
}

void qkv_add_layernorm_backward(qkv_graph *g, qkv_node *nd) {
    qkv_layernorm_backward(g, nd); /* one backward for both: see `fused` */
}

/* -------------------------------------------------------------- embedding */

qkv_tensor *qkv_embedding(qkv_graph *g, qkv_tensor *table, const int32_t *ids,
                          int ndim, const int *shape) {
    char st[64];
    QKV_CHECK(table->ndim == 2, "embedding: table must be (V, D), got %s",
              qkv_shape_str(table, st));
    QKV_CHECK(ndim >= 1 && ndim < QKV_MAX_DIMS,
              "embedding: ids need 1..%d dims, got %d", QKV_MAX_DIMS - 1, ndim);
    int V = table->shape[0], D = table->shape[1], yshape[QKV_MAX_DIMS];
    for (int i = 0; i < ndim; i++) yshape[i] = shape[i];
    yshape[ndim] = D;
    size_t rows = qkv_shape_numel(ndim, shape, "embedding ids");
    for (size_t i = 0; i < rows; i++)
        QKV_CHECK(ids[i] >= 0 && ids[i] < V,
                  "embedding: id %d at position %zu is outside the table %s",
                  (int)ids[i], i, qkv_shape_str(table, st));
    qkv_tensor *y = qkv_tensor_new(g, ndim + 1, yshape);
    for (size_t i = 0; i < rows; i++)
        memcpy(y->data + i * D, table->data + (size_t)ids[i] * D,
               (size_t)D * sizeof(float));
    qkv_node *nd = qkv_record(g, QKV_OP_EMBEDDING, y, table, NULL, NULL);
    if (nd) nd->s.embedding.ids = qkv_graph_copy(g, ids, rows * sizeof *ids);
    return y;
}

void qkv_embedding_backward(qkv_graph *g, qkv_node *nd) {
    /* y[i] = table[ids[i]];  dtable[ids[i]] += dy[i] (in order: ids repeat) */
    qkv_tensor *table = nd->in[0];
    float *dt = qkv_grad(g, table);
    const float *dy = nd->out->grad;
    int D = table->shape[1];
    size_t rows = nd->out->n / (size_t)D;
    for (size_t i = 0; i < rows; i++) {
        float *row = dt + (size_t)nd->s.embedding.ids[i] * D;
        for (int j = 0; j < D; j++) row[j] += dy[i * D + j];
    }
}

/* -------------------------------------------------- reshape and heads */

qkv_tensor *qkv_reshape(qkv_graph *g, qkv_tensor *x, int ndim,
                        const int *shape) {
    size_t n = qkv_shape_numel(ndim, shape, "reshape");
    char sx[64];
    QKV_CHECK(n == x->n, "reshape: %s has %zu elements, the new shape %zu",
              qkv_shape_str(x, sx), x->n, n);
    qkv_tensor *y = qkv_arena_alloc(&g->arena, sizeof *y);
    memset(y, 0, sizeof *y);
    y->ndim = ndim;
    for (int i = 0; i < ndim; i++) y->shape[i] = shape[i];
    y->n = n;
    y->data = x->data; /* a view; the gradient stays separate */
    qkv_record(g, QKV_OP_RESHAPE, y, x, NULL, NULL);
    return y;
}

void qkv_reshape_backward(qkv_graph *g, qkv_node *nd) {
    /* y = x (new shape);  dx += dy */
    int acc;
    float *dx = qkv_grad_write(g, nd->in[0], &acc);
    const float *dy = nd->out->grad;
    for (size_t i = 0; i < nd->out->n; i++)
        dx[i] = (acc ? dx[i] : 0.0f) + dy[i];
}

/* Copies between (B, T, H*K) and (B, H, T, K); `to_heads` picks the way. */
static void permute_heads(float *dst, const float *src, int B, int T, int H,
                          int K, int to_heads, int accumulate) {
    QKV_OMP(omp parallel for collapse(2) if ((size_t)B * T * H * K > PAR_MIN))
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                size_t flat = (((size_t)b * T + t) * H + h) * K;
                size_t head = (((size_t)b * H + h) * T + t) * K;
                float *d = dst + (to_heads ? head : flat);
                const float *s = src + (to_heads ? flat : head);
                if (accumulate)
                    for (int k = 0; k < K; k++) d[k] = d[k] + s[k];
                else
                    memcpy(d, s, (size_t)K * sizeof(float));
            }
}

qkv_tensor *qkv_split_heads(qkv_graph *g, qkv_tensor *x, int heads) {
    char sx[64];
    QKV_CHECK(x->ndim == 3 && heads > 0 && x->shape[2] % heads == 0,
              "split_heads: x %s must be (B, T, H*K) with H = %d dividing the "
              "last dim",
              qkv_shape_str(x, sx), heads);
    int B = x->shape[0], T = x->shape[1], K = x->shape[2] / heads;
    qkv_tensor *y = qkv_tensor_new(g, 4, (int[]){B, heads, T, K});
    permute_heads(y->data, x->data, B, T, heads, K, 1, 0);
    qkv_node *nd = qkv_record(g, QKV_OP_SPLIT_HEADS, y, x, NULL, NULL);
    if (nd) nd->s.heads.heads = heads;
    return y;
}

void qkv_split_heads_backward(qkv_graph *g, qkv_node *nd) {
    /* y (B,H,T,K) = x (B,T,H*K) permuted;  dx += dy permuted back */
    qkv_tensor *y = nd->out;
    int acc;
    float *dx = qkv_grad_write(g, nd->in[0], &acc);
    permute_heads(dx, y->grad, y->shape[0], y->shape[2], y->shape[1],
                  y->shape[3], 0, acc);
}

qkv_tensor *qkv_merge_heads(qkv_graph *g, qkv_tensor *x) {
    char sx[64];
    QKV_CHECK(x->ndim == 4, "merge_heads: x %s must be (B, H, T, K)",
              qkv_shape_str(x, sx));
    int B = x->shape[0], H = x->shape[1], T = x->shape[2], K = x->shape[3];
    QKV_CHECK((int64_t)H * K <= INT32_MAX, "merge_heads: x %s is too wide", sx);
    qkv_tensor *y = qkv_tensor_new(g, 3, (int[]){B, T, H * K});
    permute_heads(y->data, x->data, B, T, H, K, 0, 0);
    qkv_node *nd = qkv_record(g, QKV_OP_MERGE_HEADS, y, x, NULL, NULL);
    if (nd) nd->s.heads.heads = H;
    return y;
}

void qkv_merge_heads_backward(qkv_graph *g, qkv_node *nd) {
    /* y (B,T,H*K) = x (B,H,T,K) permuted;  dx += dy permuted back */
    qkv_tensor *x = nd->in[0];
    int acc;
    float *dx = qkv_grad_write(g, x, &acc);
    permute_heads(dx, nd->out->grad, x->shape[0], x->shape[2], x->shape[1],
                  x->shape[3], 1, acc);
}

/* ---------------------------------------------------------- cross-entropy */

qkv_tensor *qkv_cross_entropy(qkv_graph *g, qkv_tensor *logits,
                              const int32_t *target, int ignore_index,
                              float label_smoothing) {
    return qkv_cross_entropy_over(g, logits, target, ignore_index,
                                  label_smoothing, 0.0);
}

qkv_tensor *qkv_cross_entropy_over(qkv_graph *g, qkv_tensor *logits,
                                   const int32_t *target, int ignore_index,
                                   float label_smoothing, double divisor) {
    char sl[64];
    QKV_CHECK(divisor >= 0, "cross_entropy: divisor %g < 0", divisor);
    int V = qkv_tensor_cols(logits);
    size_t N = qkv_tensor_rows(logits);
    QKV_CHECK(logits->ndim >= 1 && V > 0, "cross_entropy: logits %s are empty",
              qkv_shape_str(logits, sl));
    QKV_CHECK(label_smoothing >= 0.0f && label_smoothing <= 1.0f,
              "cross_entropy: label smoothing %g is not in [0, 1]",
              (double)label_smoothing);
    for (size_t i = 0; i < N; i++)
        QKV_CHECK(target[i] == ignore_index ||
                      (target[i] >= 0 && target[i] < V),
                  "cross_entropy: target %d at row %zu is outside [0, %d) for "
                  "logits %s",
                  (int)target[i], i, V, qkv_shape_str(logits, sl));
    float *prob = qkv_arena_alloc(&g->arena, logits->n * sizeof(float));
    double *row_loss = qkv_arena_alloc(&g->arena, N * sizeof(double));
    float ls = label_smoothing;
    QKV_OMP(omp parallel for if (logits->n > PAR_MIN / 4))
    for (size_t i = 0; i < N; i++) {
        const float *x = logits->data + i * V;
        float *p = prob + i * V, mx = qkv_vmax(x, V);
        /* the sum in float (16 partial sums), as PyTorch sums in float */
        float sum = qkv_vexp_sum(p, x, mx, V), inv = 1.0f / sum;
        for (int j = 0; j < V; j++) p[j] *= inv;
        double lse = mx + log((double)sum); /* log p_j = x_j - lse */
        row_loss[i] = 0.0;
        if (target[i] != ignore_index) {
            double mean_x = ls > 0.0f ? (double)qkv_vsum(x, V) / V : 0.0;
            row_loss[i] =
                -(1.0 - ls) * (x[target[i]] - lse) - ls * (mean_x - lse);
        }
    }
    double total = 0.0;
    size_t count = 0;
    for (size_t i = 0; i < N; i++)
        if (target[i] != ignore_index) {
            total += row_loss[i];
            count++;
        }
    double div = divisor > 0 ? divisor : (double)count;
    qkv_tensor *y = qkv_tensor_new(g, 0, NULL);
    y->data[0] = div > 0 ? (float)(total / div) : 0.0f;
    qkv_node *nd = qkv_record(g, QKV_OP_CROSS_ENTROPY, y, logits, NULL, NULL);
    if (nd) {
        nd->s.xent.prob = prob;
        nd->s.xent.target = qkv_graph_copy(g, target, N * sizeof *target);
        nd->s.xent.ignore_index = ignore_index;
        nd->s.xent.smoothing = ls;
        nd->s.xent.count = (float)div;
    }
    return y;
}

void qkv_cross_entropy_backward(qkv_graph *g, qkv_node *nd) {
    /* loss = mean_i -sum_j q_ij log p_ij, q = (1-ls) onehot + ls/V;
     * dlogits_ij += dloss / count * (p_ij - q_ij) on rows not ignored */
    qkv_tensor *logits = nd->in[0];
    if (nd->s.xent.count == 0) return;
    int acc;
    float *dx = qkv_grad_write(g, logits, &acc);
    int V = qkv_tensor_cols(logits);
    size_t N = qkv_tensor_rows(logits);
    float gs = nd->out->grad[0] / nd->s.xent.count, ls = nd->s.xent.smoothing;
    const float *prob = nd->s.xent.prob;
    const int32_t *target = nd->s.xent.target;
    QKV_OMP(omp parallel for if (logits->n > PAR_MIN / 4))
    for (size_t i = 0; i < N; i++) {
        float *d = dx + i * V;
        if (target[i] == nd->s.xent.ignore_index) {
            if (!acc) memset(d, 0, (size_t)V * sizeof(float));
            continue;
        }
        const float *p = prob + i * V;
        for (int j = 0; j < V; j++)
            d[j] = (acc ? d[j] : 0.0f) + gs * (p[j] - ls / (float)V);
        d[target[i]] -= gs * (1.0f - ls);
    }
}

/* -------------------------------------------------------------- sum, mean */

static qkv_tensor *reduce(qkv_graph *g, qkv_tensor *x, qkv_op op) {
    double s = 0.0;
    for (size_t i = 0; i < x->n; i++) s += x->data[i];
    qkv_tensor *y = qkv_tensor_new(g, 0, NULL);
    y->data[0] = (float)(op == QKV_OP_MEAN && x->n ? s / (double)x->n : s);
    qkv_record(g, op, y, x, NULL, NULL);
    return y;
}

qkv_tensor *qkv_sum(qkv_graph *g, qkv_tensor *x) {
    return reduce(g, x, QKV_OP_SUM);
}
qkv_tensor *qkv_mean(qkv_graph *g, qkv_tensor *x) {
    return reduce(g, x, QKV_OP_MEAN);
}

static void reduce_backward(qkv_graph *g, qkv_node *nd) {
    /* y = sum x (or mean);  dx += dy (or dy / n) */
    qkv_tensor *x = nd->in[0];
    int acc;
    float *dx = qkv_grad_write(g, x, &acc), d = nd->out->grad[0];
    if (nd->op == QKV_OP_MEAN) d /= (float)x->n;
    for (size_t i = 0; i < x->n; i++) dx[i] = (acc ? dx[i] : 0.0f) + d;
}

void qkv_sum_backward(qkv_graph *g, qkv_node *nd) {
    reduce_backward(g, nd);
}
void qkv_mean_backward(qkv_graph *g, qkv_node *nd) {
    reduce_backward(g, nd);
}

/* -------------------------------------------------------------- the table */

/* One row per line of QKV_OPS (tape.h): {"name", qkv_name_backward}. */
#define QKV_OP_ROW_(E, name) [QKV_OP_##E] = {#name, qkv_##name##_backward},
const qkv_op_info qkv_op_table[QKV_OP_COUNT] = {QKV_OPS(QKV_OP_ROW_)};
#undef QKV_OP_ROW_
