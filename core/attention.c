/* attention.c - masked scaled dot-product attention, fused per (batch, head).
 *
 *   A = softmax(mask(scale * Q K^T)),  Y = A V   (Vaswani et al. 2017, eq. 1)
 *
 * The forward keeps A (B,H,T,S) for the backward, which then needs only
 * matrix products of the same sizes as the forward: O(T S K) per head, never
 * O(T^2 S):
 *
 *   dV = A^T dY,  dA = dY V^T,  dZ = A * (dA - rowsum(dA * A)) * scale,
 *   dQ = dZ K,    dK = dZ^T Q         (Z the scaled, masked scores)
 *
 * Two layouts of the same kernel. qkv_attention takes heads as a dimension,
 * (B,H,T,K). qkv_attention_packed takes the projections as they come out of
 * the linear layers, (B,T,C) with the H heads side by side in a block of
 * H*K columns, and writes Y the same way: a head is then a (T,K) matrix with
 * row stride C, which the matmul kernels read and write in place, so the
 * split/merge copies disappear and Q, K, V can share one x W_QKV^T product.
 *
 * Masks: a key j is hidden from query i when it is padding (key_pad[b, j]) or,
 * with causal on, when j > i + (S - T) (the future; with T < S the queries
 * are the last T positions, as in incremental decoding). A hidden key gets
 * weight exactly 0; a query that sees no key at all gets weights 0 and
 * output 0, never NaN. Heads run in parallel; each writes only its own slices.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define QKV_X86 1
#endif

#include "bf16.h"
#include "matmul.h"
#include "op_table.h"
#include "ops.h"
#include "threads.h"
#include "vec.h"

/* Where head h of batch b lives: element (t, k) of its (rows, K) matrix is
 * at data[b * sb + h * sh + t * ld + k]. */
typedef struct heads_view {
    float *data;
    size_t sb, sh;
    int ld;
} heads_view;

static float *head_at(const heads_view *v, int b, int h) {
    return v->data + (size_t)b * v->sb + (size_t)h * v->sh;
}

/* A (B,H,rows,K) tensor's buffer (data or grad). */
static heads_view view_4d(float *data, const qkv_tensor *t) {
    size_t rk = (size_t)t->shape[2] * t->shape[3];
    return (heads_view){data, rk * t->shape[1], rk, t->shape[3]};
}

/* Columns [col, col + H*K) of a (B,rows,C) tensor's buffer. */
static heads_view view_packed(float *data, const qkv_tensor *t, int col,
                              int K) {
    size_t C = (size_t)t->shape[2];
    return (heads_view){data ? data + col : NULL, C * t->shape[1], (size_t)K,
                        (int)C};
}

/* Asks for the cache lines of head bh (b H + h, none when bh >= B H) of v,
 * rows x K, ahead of use (called one head ahead). A head's rows are a few
 * hundred bytes apart in the packed layout (the other heads' columns lie
 * between them): the hardware prefetchers do not follow that pattern across
 * rows, and every row of a head not yet in cache stalls the kernels that
 * read it. The hint is the farthest level (prefetcht2): with rows 3 KiB
 * apart (base's packed Q|K|V) a head's lines fall in a few L1 sets, and
 * prefetching them into L1 evicted the lines of the head being computed.
 * Base's attention forward, inputs cold, 2 threads: 1.39 ms with the L1
 * hint, 1.03 ms with this one, 1.43 ms with none. */
static void prefetch_head(const heads_view *v, int bh, int BH, int H, int rows,
                          int K) {
    if (!v->data || bh >= BH) return;
    uintptr_t p = (uintptr_t)head_at(v, bh / H, bh % H);
    size_t bytes = (size_t)K * sizeof(float),
           ld = (size_t)v->ld * sizeof(float);
    for (int r = 0; r < rows; r++, p += ld)
        for (uintptr_t l = p & ~(uintptr_t)63; l < p + bytes; l += 64)
            __builtin_prefetch((const void *)l, 0, 1);
}

/* Turns one (T, S) block of raw scores into attention weights in place. */
static void masked_softmax(float *A, int T, int S, float scale, int causal,
                           const uint8_t *pad /* (S) or NULL */) {
    for (int i = 0; i < T; i++) {
        float *row = A + (size_t)i * S;
        int last = causal ? i + (S - T) : S - 1; /* last visible key */
        if (last > S - 1) last = S - 1;
        for (int j = 0; j < S; j++) {
            int hidden = j > last || (pad && pad[j]);
            row[j] = hidden ? -INFINITY : row[j] * scale;
        }
        float mx = qkv_vmax(row, S);
        if (mx == -INFINITY) { /* every key hidden */
            memset(row, 0, (size_t)S * sizeof(float));
            continue;
        }
        float inv = 1.0f / qkv_vexp_sum(row, row, mx, S);
        for (int j = 0; j < S; j++) row[j] *= inv;
    }
}

/* ---- small heads: T, S, K <= 64 ----
 * At these sizes the blocked sgemm spends more on packing, edge tiles and
 * calls than on arithmetic (15 GFLOPS for 16 x 16 x 16), so each product of
 * one head is one pass over register-resident output rows instead:
 *
 *   c[r, 0:w] (+)= sum_{m < len} a[r ar + m am] * b[m ldb + 0:w]
 *
 * a is read as scalars with any strides (Q, dY, A or dZ, transposed or not),
 * b as rows of whole vectors (V, K, Q, dY, or K^T / V^T transposed into a
 * scratch block). Every element is a sum over m in ascending order from 0,
 * then added to c when accumulating: the order depends on the shapes alone,
 * never on threads. qkv_attention_small_max = 0 turns the path off (tests
 * compare both). */
int qkv_attention_small_max = 64;

#define SMALL_MAX 64 /* scratch blocks are SMALL_MAX x SMALL_MAX */
_Static_assert(QKV_BF16_KC >= SMALL_MAX,
               "a small head's product is one k block");

/* c[0:w] (+)= v[0:w] for the NV vectors of one output row */
static inline __attribute__((always_inline)) void
store_row(float *c, int w, const vf *v, int nv, int acc) {
    for (int i = 0; i < nv; i++, c += VW, w -= VW) {
        if (w >= VW) { /* a whole vector */
            vf t = acc ? vload(c) + v[i] : v[i];
            memcpy(c, &t, sizeof t);
            continue;
        }
        float t[VW];
        memcpy(t, &v[i], sizeof t);
        for (int j = 0; j < w; j++) c[j] = acc ? c[j] + t[j] : t[j];
    }
}

/* What rows_kernel does to a finished block of rows before storing it:
 * nothing, the masked softmax of scores Z (forward: the rows become A), or
 * the softmax backward of dA (the rows become dZ). Either way each row is
 * still in registers, so A and dZ are written once and never reread here. */
enum { EPI_NONE, EPI_SOFTMAX, EPI_SOFTMAX_GRAD };
typedef struct rows_epilogue {
    int mode;
    int T, S, causal; /* the mask: query i sees keys j <= i + S - T */
    float scale;
    const vi *hide; /* (ceil(S / VW)) lanes hidden by padding or j >= S */
    const float *A; /* EPI_SOFTMAX_GRAD: the weights, (T, S) */
} rows_epilogue;

/* Rows r0..r0+RB-1 of Z (NV vectors each) -> their masked softmax, as
 * masked_softmax does it: the same operations in the same order, so the
 * same bits. Each step runs over all RB rows before the next, so the rows'
 * dependency chains (max tree, exp, sum tree, divide) overlap. */
static inline __attribute__((always_inline)) void
softmax_regs(vf z[8][4], int RB, int NV, const rows_epilogue *e, int r0) {
    const vi iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    float m[8];
    for (int r = 0; r < RB; r++) {
        int i = r0 + r, last = e->causal ? i + (e->S - e->T) : e->S - 1;
        if (last > e->S - 1) last = e->S - 1;
        vf mx = vsplat(-INFINITY);
        for (int v = 0; v < NV; v++) {
            vi hidden = e->hide[v] | (iota + v * VW > last);
            z[r][v] =
                vselect(hidden, vsplat(-INFINITY), z[r][v] * vsplat(e->scale));
            mx = vmax(z[r][v], mx);
        }
        m[r] = vmaxall(mx);
    }
    vf sum[8];
    for (int r = 0; r < RB; r++) {
        /* every key hidden: m = -inf; exp(-inf - 0) = 0, zeroed below */
        vf mv = vsplat(m[r] == -INFINITY ? 0.0f : m[r]);
        sum[r] = vsplat(0.0f);
        for (int v = 0; v < NV; v++) {
            z[r][v] = vexpf(z[r][v] - mv);
            sum[r] = sum[r] + z[r][v];
        }
    }
    for (int r = 0; r < RB; r++) {
        vf inv = vsplat(m[r] == -INFINITY ? 0.0f : 1.0f / vtotal(sum[r]));
        for (int v = 0; v < NV; v++) z[r][v] = z[r][v] * inv;
    }
}

/* Rows r0.. of dA -> dZ = A * (dA - rowsum(dA * A)) * scale, step by step
 * over all RB rows as above. */
static inline __attribute__((always_inline)) void
softmax_grad_regs(vf z[8][4], int RB, int NV, const rows_epilogue *e, int r0) {
    vf av[8][4], dot[8];
    for (int r = 0; r < RB; r++) {
        const float *a = e->A + (size_t)(r0 + r) * e->S;
        dot[r] = vsplat(0.0f);
        for (int v = 0; v < NV; v++) {
            av[r][v] = vload_part(a + v * VW, e->S - v * VW);
            dot[r] = dot[r] + av[r][v] * z[r][v];
        }
    }
    vf sc = vsplat(e->scale);
    for (int r = 0; r < RB; r++) {
        vf d = vsplat(vtotal(dot[r]));
        for (int v = 0; v < NV; v++) z[r][v] = av[r][v] * (z[r][v] - d) * sc;
    }
}

/* Rows r0..r0+RB-1 of a product, summed in s: the epilogue e (if any)
 * applied in registers, then stored to (or added to, acc) c's rows. */
static inline __attribute__((always_inline)) void
finish_rows(vf s[8][4], int RB, int NV, const rows_epilogue *e, int r0,
            float *c, size_t ldc, int w, int acc) {
    if (e && e->mode == EPI_SOFTMAX)
        softmax_regs(s, RB, NV, e, r0);
    else if (e && e->mode == EPI_SOFTMAX_GRAD)
        softmax_grad_regs(s, RB, NV, e, r0);
    for (int r = 0; r < RB; r++) store_row(c + r * ldc, w, s[r], NV, acc);
}

/* RB rows of c from row r0, NV vectors wide: the accumulators stay in
 * registers. */
static inline __attribute__((always_inline)) void
rows_kernel(int RB, int NV, int len, const float *a, size_t ar, size_t am,
            const float *b, size_t ldb, float *c, size_t ldc, int w, int acc,
            const rows_epilogue *e, int r0) {
    vf s[8][4];
    for (int r = 0; r < RB; r++)
        for (int v = 0; v < NV; v++) s[r][v] = (vf){0};
    for (int m = 0; m < len; m++) {
        vf bv[4];
        for (int v = 0; v < NV; v++)
            bv[v] = vload(b + (size_t)m * ldb + v * VW);
        for (int r = 0; r < RB; r++) {
            vf x = vsplat(a[r * ar + m * am]);
            for (int v = 0; v < NV; v++) s[r][v] = vfma(x, bv[v], s[r][v]);
        }
    }
    finish_rows(s, RB, NV, e, r0, c, ldc, w, acc);
}

/* Every row r of c (rows of them) by KERNEL(RB, NV) calls, each for rows
 * r..r+RB-1 and NV = nv vectors: blocks of 8 (4 for 3 or 4 vectors) rows
 * whose accumulators fit the 32 registers, then one row at a time. */
#define ROW_BLOCKS(KERNEL)                                                     \
    switch (nv) {                                                              \
    case 1:                                                                    \
        for (; r + 8 <= rows; r += 8) KERNEL(8, 1);                            \
        for (; r < rows; r++) KERNEL(1, 1);                                    \
        break;                                                                 \
    case 2:                                                                    \
        for (; r + 8 <= rows; r += 8) KERNEL(8, 2);                            \
        for (; r < rows; r++) KERNEL(1, 2);                                    \
        break;                                                                 \
    case 3:                                                                    \
        for (; r + 4 <= rows; r += 4) KERNEL(4, 3);                            \
        for (; r < rows; r++) KERNEL(1, 3);                                    \
        break;                                                                 \
    default:                                                                   \
        for (; r + 4 <= rows; r += 4) KERNEL(4, 4);                            \
        for (; r < rows; r++) KERNEL(1, 4);                                    \
        break;                                                                 \
    }

/* All rows of c (rows x w, w <= SMALL_MAX); b's rows hold ceil(w / VW)
 * readable vectors. e: NULL, or what to do to each row before it is stored.
 */
static void rows_product(int rows, int w, int len, const float *a, size_t ar,
                         size_t am, const float *b, size_t ldb, float *c,
                         size_t ldc, int acc, const rows_epilogue *e) {
    int nv = (w + VW - 1) / VW, r = 0;
#define ROWS(RB, NV)                                                           \
    rows_kernel(RB, NV, len, a + r * ar, ar, am, b, ldb, c + r * ldc, ldc, w,  \
                acc, e, r)
    ROW_BLOCKS(ROWS)
#undef ROWS
}

/* ---- small heads in bf16 (qkv_graph.precision QKV_BF16) ----
 * The same passes with the operands rounded to bf16 and held as pair words
 * (bf16.h), summed by vdpbf16ps (or a C model of it): for each output
 * element, from 0, s = s + a[2p+1] b[2p+1], then s = s + a[2p] b[2p], one
 * pair p at a time, then stored or added to c. That is the order bf16.h
 * defines for one k block (len <= 64 < QKV_BF16_KC), so each product gives
 * qkv_gemm_bf16's bits (its avx512-bf16 and portable kernels'), and the
 * epilogues are the fp32 pass's: the small and the sgemm paths agree bit
 * for bit in bf16 too.
 *
 *   c[r, 0:w] (+)= sum_{p < np} a[r ar + p ap] . b[p ldb + 0:w]
 *
 * a's words are an operand's row pairs (ar = its row's words, ap = 1) or,
 * transposed, its column pairs (ar = 1, ap = the pair row's words); b's are
 * column pairs or transposed row pairs, whole vectors of them. */

#if QKV_X86
__attribute__((target("avx512f,avx512bf16"), always_inline)) static inline void
dp_kernel(int RB, int NV, int np, const uint32_t *a, size_t ar, size_t ap,
          const uint32_t *b, size_t ldb, float *c, size_t ldc, int w, int acc,
          const rows_epilogue *e, int r0) {
    __m512 t[8][4];
    for (int r = 0; r < RB; r++)
        for (int v = 0; v < NV; v++) t[r][v] = _mm512_setzero_ps();
    for (int p = 0; p < np; p++) {
        __m512bh bv[4];
        for (int v = 0; v < NV; v++)
            bv[v] = (__m512bh)_mm512_loadu_si512(b + (size_t)p * ldb + v * VW);
        for (int r = 0; r < RB; r++) {
            __m512bh x = (__m512bh)_mm512_set1_epi32((int)a[r * ar + p * ap]);
            for (int v = 0; v < NV; v++)
                t[r][v] = _mm512_dpbf16_ps(t[r][v], x, bv[v]);
        }
    }
    vf s[8][4];
    for (int r = 0; r < RB; r++)
        for (int v = 0; v < NV; v++) s[r][v] = (vf)t[r][v];
    finish_rows(s, RB, NV, e, r0, c, ldc, w, acc);
}

/* rows_product's blocking, with dp_kernel */
__attribute__((target("avx512f,avx512bf16"))) static void
dp_product_avx512(int rows, int w, int np, const uint32_t *a, size_t ar,
                  size_t ap, const uint32_t *b, size_t ldb, float *c,
                  size_t ldc, int acc, const rows_epilogue *e) {
    int nv = (w + VW - 1) / VW, r = 0;
#define DP(RB, NV)                                                             \
    dp_kernel(RB, NV, np, a + r * ar, ar, ap, b, ldb, c + r * ldc, ldc, w,     \
              acc, e, r)
    ROW_BLOCKS(DP)
#undef DP
}
#endif

/* The bf16 in each half of pair words as floats, read as vdpbf16ps reads
 * them: a denormal is a zero of its sign (DAZ). */
typedef uint32_t vu __attribute__((vector_size(VW * sizeof(float))));
VINLINE vf daz(vu u) {
    vu keep = (vu)((u & 0x7f800000u) != 0) | 0x80000000u; /* sign always */
    return (vf)(u & keep);
}
VINLINE vf pair_lo(vu u) {
    return daz(u << 16);
}
VINLINE vf pair_hi(vu u) {
    return daz(u & 0xffff0000u);
}

/* One vdpbf16ps step in each lane: s + a b in one rounding (vfma; bf16
 * products are exact in fp32), a denormal result flushed to zero (FTZ). */
VINLINE vf dp_step(vf s, vf a, vf b) {
    return daz((vu)vfma(a, b, s));
}

/* dp_product_avx512's results in C, one row at a time (any CPU). */
static void dp_product_c(int rows, int w, int np, const uint32_t *a, size_t ar,
                         size_t ap, const uint32_t *b, size_t ldb, float *c,
                         size_t ldc, int acc, const rows_epilogue *e) {
    int nv = (w + VW - 1) / VW;
    for (int r = 0; r < rows; r++) {
        vf s[8][4];
        for (int v = 0; v < nv; v++) s[0][v] = vsplat(0.0f);
        for (int p = 0; p < np; p++) {
            vu x = (vu){0} + a[r * ar + p * ap];
            vf lo = pair_lo(x), hi = pair_hi(x);
            for (int v = 0; v < nv; v++) {
                vu bw;
                memcpy(&bw, b + (size_t)p * ldb + v * VW, sizeof bw);
                s[0][v] =
                    dp_step(dp_step(s[0][v], hi, pair_hi(bw)), lo, pair_lo(bw));
            }
        }
        finish_rows(s, 1, nv, e, r, c + r * ldc, ldc, w, acc);
    }
}

/* ---- small heads in bf16 on AMX tiles (kind 3) ----
 * With the amx-bf16 kernel (or its model) each product is summed on tiles
 * (bf16.h qkv_bf16_amx_words) in the AMX kernel's order for one k block, so
 * a head gives the bits of the blocked path (qkv_gemm_bf16) with that
 * kernel, as kinds 1 and 2 give those of the vdpbf16ps kernels. The pair
 * words are the ones kinds 1 and 2 read: B's pair rows are already what a
 * B tile loads (16 columns of pair words a row); A's words must be rows
 * (pairs along them), so a transposed A (A^T, dZ^T: column pairs, one pair
 * row after another) is turned into rows first. The tiles' sums go to a
 * block in L1; the epilogue (softmax, its backward, adding to c) reads
 * them from there, in dp_product's operations. */

/* n rounded up to whole vectors */
static size_t up_vw(int n) {
    return (size_t)(n + VW - 1) / VW * VW;
}

/* AMX heads: a transposed A's words as rows, and the tiles' sums */
static _Thread_local _Alignas(64) uint32_t
    words_rows[SMALL_MAX * SMALL_MAX / 2];
static _Thread_local _Alignas(64) float tile_sums[SMALL_MAX * SMALL_MAX];

/* dst (w, rows padded to vectors) = src (rows, w)^T, row stride ld, for
 * any 4-byte elements (floats, or bf16 pair words), copied bit for bit. */
static void transpose32(const void *src, size_t ld, int rows, int w,
                        void *dst) {
    size_t rp = (size_t)(rows + VW - 1) / VW * VW;
    const uint32_t *s = src;
    uint32_t *d = dst;
#if defined(__AVX512F__)
    /* 16 x 16 blocks through registers; masked loads stop at row ends */
    for (int i0 = 0; i0 < rows; i0 += 16)
        for (int k0 = 0; k0 < w; k0 += 16) {
            int kn = w - k0 < 16 ? w - k0 : 16;
            __mmask16 m = (__mmask16)((1u << kn) - 1u);
            __m512 r[16];
            for (int i = 0; i < 16; i++)
                r[i] = i0 + i < rows ? _mm512_maskz_loadu_ps(
                                           m, s + (size_t)(i0 + i) * ld + k0)
                                     : _mm512_setzero_ps();
            qkv_transpose16(r);
            for (int k = 0; k < kn; k++)
                _mm512_storeu_ps(d + (size_t)(k0 + k) * rp + i0, r[k]);
        }
    return;
#endif
    /* memcpy: the elements may be floats, read and written as bytes */
    for (int k = 0; k < w; k++) {
        uint32_t *dk = d + (size_t)k * rp;
        for (int i = 0; i < rows; i++)
            memcpy(dk + i, s + (size_t)i * ld + k, 4);
        memset(dk + rows, 0, (rp - (size_t)rows) * 4);
    }
}

/* RB rows from r0 of the tiles' sums t (row stride ldt), finished as
 * dp_kernel finishes its registers */
static inline __attribute__((always_inline)) void
sums_kernel(int RB, int NV, const float *t, size_t ldt, float *c, size_t ldc,
            int w, int acc, const rows_epilogue *e, int r0) {
    vf s[8][4];
    for (int r = 0; r < RB; r++)
        for (int v = 0; v < NV; v++)
            s[r][v] = vload(t + (size_t)r * ldt + v * VW);
    finish_rows(s, RB, NV, e, r0, c, ldc, w, acc);
}

static void amx_product(int rows, int w, int np, const uint32_t *a, size_t ar,
                        size_t ap, const uint32_t *b, size_t ldb, float *c,
                        size_t ldc, int acc, const rows_epilogue *e) {
    size_t lda = ar;
    if (ap != 1) { /* column pairs (np pair rows of rows words): as rows */
        lda = up_vw(np);
        transpose32(a, ap, np, rows, words_rows);
        a = words_rows;
    }
    size_t ldt = up_vw(w);
    qkv_bf16_amx_words(rows, w, np, a, lda, b, ldb, tile_sums, ldt);
    int nv = (w + VW - 1) / VW, r = 0;
#define SUMS(RB, NV)                                                           \
    sums_kernel(RB, NV, tile_sums + r * ldt, ldt, c + r * ldc, ldc, w, acc, e, \
                r)
    ROW_BLOCKS(SUMS)
#undef SUMS
}

static void dp_product(int kind, int rows, int w, int np, const uint32_t *a,
                       size_t ar, size_t ap, const uint32_t *b, size_t ldb,
                       float *c, size_t ldc, int acc, const rows_epilogue *e) {
    if (kind == 3) {
        amx_product(rows, w, np, a, ar, ap, b, ldb, c, ldc, acc, e);
        return;
    }
#if QKV_X86
    if (kind == 2) {
        dp_product_avx512(rows, w, np, a, ar, ap, b, ldb, c, ldc, acc, e);
        return;
    }
#endif
    (void)kind;
    dp_product_c(rows, w, np, a, ar, ap, b, ldb, c, ldc, acc, e);
}

/* Lanes of a (S) key row hidden whatever the query: padding, or j >= S. */
static void hidden_keys(vi *hide, int S, const uint8_t *pad) {
    for (int v = 0; v < (S + VW - 1) / VW; v++)
        for (int l = 0; l < VW; l++) {
            int j = v * VW + l;
            hide[v][l] = j >= S || (pad && pad[j]) ? -1 : 0;
        }
}

/* A (rows, w) block with row stride ld as rows of whole vectors: itself when
 * w is a multiple of VW, else a zero-padded copy in dst. */
static const float *vector_rows(const float *src, int ld, int rows, int w,
                                float *dst, size_t *ldb) {
    if (w % VW == 0) {
        *ldb = (size_t)ld;
        return src;
    }
    int wp = (w + VW - 1) / VW * VW;
    for (int i = 0; i < rows; i++) {
        memcpy(dst + (size_t)i * wp, src + (size_t)i * ld, (size_t)w * 4);
        memset(dst + (size_t)i * wp + w, 0, (size_t)(wp - w) * 4);
    }
    *ldb = (size_t)wp;
    return dst;
}

/* dst (w, rows padded to vectors) = src (rows, w)^T, row stride ld. */
static const float *transposed(const float *src, int ld, int rows, int w,
                               float *dst, size_t *ldb) {
    *ldb = up_vw(rows);
    transpose32(src, (size_t)ld, rows, w, dst);
    return dst;
}

static _Thread_local _Alignas(64) float scratch[2][SMALL_MAX * SMALL_MAX];
static _Thread_local _Alignas(64) float scratch_dz[SMALL_MAX * SMALL_MAX];
/* bf16: a product's two operands as pair words (at most 64 x 32 words) */
static _Thread_local _Alignas(64) uint32_t words[2][SMALL_MAX * SMALL_MAX / 2];

static int small_heads(int T, int S, int K) {
    int lim = qkv_attention_small_max < SMALL_MAX ? qkv_attention_small_max
                                                  : SMALL_MAX;
    return T <= lim && S <= lim && K <= lim;
}

int qkv_attention_bf16_min = 65536;

/* How a head of T (T_full) queries, S keys, K columns of a bf16 graph
 * computes its products: 0 fp32; in bf16, 1 with the C model of vdpbf16ps,
 * 2 with AVX512-BF16 (the avx512-bf16 kernel's CPUs), 3 on AMX tiles (the
 * amx-bf16 kernel, or amx-model's model of them). 1 and 2 give the same
 * bits, those of the vdpbf16ps kernels; 3 those of the AMX kernel (ops.h:
 * qkv_attention_bf16_min). dp_kind: the same for any graph.
 *
 * On tiles the products cost next to nothing (a 64 x 64 x 32 product is 16
 * TDPBF16PS), so AMX heads pay from smaller sizes than vdpbf16ps ones:
 * with the tiles' work left out (their sums replaced by a memset, on AMD
 * EPYC Zen 5, 2 threads, 3 sets of `bench_train attention`), what is left
 * of the path (packing, transposes, softmax) took 0.71-0.72x fp32's time
 * on 64 x 64 x 32 heads, 0.79-0.80x on 64 x 64 x 16, 0.85x on 32 x 32 x
 * 32, but 1.10-1.14x on 16 x 16 x 16. Hence, with the AMX kernel: small
 * heads with T, S >= 32, K >= 16 and T S K >= AMX_HEADS_MIN. */
enum { AMX_HEADS_MIN = 32768 };

static int bf16_kind(int T, int S, int K) {
    qkv_bf16_kernel k = qkv_bf16_get_kernel();
    int amx = k == QKV_BF16_AMX || k == QKV_BF16_AMX_MODEL;
    int fast = k == QKV_BF16_AVX512;
#if !QKV_X86
    fast = 0;
#endif
    long long tsk = (long long)T * S * K;
    if (qkv_attention_bf16_min > 0 &&
        (!small_heads(T, S, K) || T < 32 || S < 32 ||
         (amx ? K < 16 || tsk < AMX_HEADS_MIN
              : k != QKV_BF16_AVX512 || K < 32 ||
                    tsk < qkv_attention_bf16_min)))
        return 0;
    return amx ? 3 : fast ? 2 : 1;
}

static int dp_kind(const qkv_graph *g, int T, int S, int K) {
    return g->precision == QKV_BF16 ? bf16_kind(T, S, K) : 0;
}

int qkv_attention_bf16_heads(int T, int S, int K) {
    return bf16_kind(T, S, K) != 0;
}

/* The forward on views; returns A (B,H,T,S) from the arena. The T queries
 * are the last T of T_full (T_full = T but in qkv_attention_rows): the
 * kernels are chosen, and the products' sums grouped, as for T_full. */
static float *attend(qkv_graph *g, heads_view q, heads_view k, heads_view v,
                     heads_view y, int B, int H, int T, int S, int K,
                     int T_full, float scale, const qkv_attn_opts *o) {
    size_t ts;
    QKV_CHECK(qkv_mul_size((size_t)T, (size_t)S, &ts) &&
                  qkv_mul_size(ts, (size_t)B * H * sizeof(float), &(size_t){0}),
              "attention: weights (%d,%d,%d,%d) overflow", B, H, T, S);
    float *A = qkv_arena_alloc(&g->arena, (size_t)B * H * ts * sizeof(float));
    const uint8_t *pad = o->key_pad;
    int small = small_heads(T_full, S, K), dp = dp_kind(g, T_full, S, K);
    int par = (size_t)B * H * ts * K > 65536;
    qkv_cut cut; /* the heads, by the threads' shares (threads.h) */
    qkv_share_cut(&cut, B * H, par ? qkv_get_threads() : 1,
                  QKV_SHARE_ATTENTION);
    QKV_OMP(omp parallel num_threads(cut.nt) if (par))
    for (int p = qkv_team_thread(); p < cut.nt; p += qkv_team_size()) {
        int lo, hi;
        qkv_share_range(&cut, p, &lo, &hi);
        for (int bh = lo; bh < hi; bh++) {
            int b = bh / H, h = bh % H;
            float *Ab = A + bh * ts;
            uint32_t *wa = words[0], *wb = words[1];
            size_t pk = (size_t)(K + 1) / 2, ps = (size_t)(S + 1) / 2;
            const float *Qb = head_at(&q, b, h), *Kb = head_at(&k, b, h),
                        *Vb = head_at(&v, b, h);
            float *Yb = head_at(&y, b, h);
            size_t ld;
            prefetch_head(&q, bh + 1, B * H, H, T, K);
            prefetch_head(&k, bh + 1, B * H, H, S, K);
            prefetch_head(&v, bh + 1, B * H, H, S, K);
            /* Z = Q K^T: (T,K) x (S,K)^T */
            const uint8_t *padb = pad ? pad + (size_t)b * S : NULL;
            if (small) { /* the softmax is applied in registers */
                vi hide[SMALL_MAX / VW];
                hidden_keys(hide, S, padb);
                rows_epilogue e = {EPI_SOFTMAX, T,    S,   o->causal,
                                   scale,       hide, NULL};
                if (dp) {
                    qkv_bf16_row_pairs(T, K, Qb, q.ld, wa, pk);
                    qkv_bf16_row_pairs_t(S, K, Kb, k.ld, wb, up_vw(S));
                    dp_product(dp, T, S, pk, wa, pk, 1, wb, up_vw(S), Ab, S, 0,
                               &e);
                } else {
                    const float *Kt =
                        transposed(Kb, k.ld, S, K, scratch[0], &ld);
                    rows_product(T, S, K, Qb, q.ld, 1, Kt, ld, Ab, S, 0, &e);
                }
            } else {
                if (dp)
                    qkv_gemm_bf16(0, 1, T, S, K, Qb, q.ld, Kb, k.ld, 0, Ab, S);
                else
                    qkv_sgemm_rows_serial(T_full, 0, 1, T, S, K, Qb, q.ld, Kb,
                                          k.ld, 0, Ab, S);
                masked_softmax(Ab, T, S, scale, o->causal, padb);
            }
            /* Y = A V: (T,S) x (S,K) */
            if (small && dp) {
                qkv_bf16_row_pairs(T, S, Ab, S, wa, ps);
                qkv_bf16_col_pairs(S, K, Vb, v.ld, wb, up_vw(K));
                dp_product(dp, T, K, ps, wa, ps, 1, wb, up_vw(K), Yb, y.ld, 0,
                           NULL);
            } else if (small) {
                const float *Vr = vector_rows(Vb, v.ld, S, K, scratch[1], &ld);
                rows_product(T, K, S, Ab, S, 1, Vr, ld, Yb, y.ld, 0, NULL);
            } else if (dp) {
                qkv_gemm_bf16(0, 0, T, K, S, Ab, S, Vb, v.ld, 0, Yb, y.ld);
            } else {
                qkv_sgemm_rows_serial(T_full, 0, 0, T, K, S, Ab, S, Vb, v.ld, 0,
                                      Yb, y.ld);
            }
        }
        qkv_share_done(&cut, p);
    }
    qkv_share_learn(&cut);
    if (o->weights) memcpy(o->weights, A, (size_t)B * H * ts * sizeof(float));
    return A;
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
    float *A =
        attend(g, view_4d(q->data, q), view_4d(k->data, k), view_4d(v->data, v),
               view_4d(y->data, y), B, H, T, S, K, T, scale, &o);
    qkv_node *nd = qkv_record(g, QKV_OP_ATTENTION, y, q, k, v);
    if (nd) {
        nd->s.attention.p = A;
        nd->s.attention.scale = scale;
        nd->s.attention.heads = H;
    }
    return y;
}

qkv_tensor *qkv_attention_packed(qkv_graph *g, qkv_tensor *q, int q_col,
                                 qkv_tensor *k, int k_col, qkv_tensor *v,
                                 int v_col, int d, int heads,
                                 const qkv_attn_opts *opts) {
    qkv_attn_opts o = {0};
    if (opts) o = *opts;
    char sq[64], sk[64], sv[64];
    QKV_CHECK(q->ndim == 3 && k->ndim == 3 && v->ndim == 3 &&
                  k->shape[0] == q->shape[0] && v->shape[0] == q->shape[0] &&
                  k->shape[1] == v->shape[1],
              "attention_packed: need q (B,T,Cq), k (B,S,Ck), v (B,S,Cv); got "
              "q %s, k %s, v %s",
              qkv_shape_str(q, sq), qkv_shape_str(k, sk), qkv_shape_str(v, sv));
    QKV_CHECK(heads > 0 && d > 0 && d % heads == 0,
              "attention_packed: %d heads do not divide the width %d", heads,
              d);
    QKV_CHECK(q_col >= 0 && q_col <= q->shape[2] - d && k_col >= 0 &&
                  k_col <= k->shape[2] - d && v_col >= 0 &&
                  v_col <= v->shape[2] - d,
              "attention_packed: columns q %d, k %d, v %d + width %d outside "
              "q %s, k %s, v %s",
              q_col, k_col, v_col, d, sq, sk, sv);
    int B = q->shape[0], T = q->shape[1], S = k->shape[1], K = d / heads;
    float scale = o.scale != 0.0f ? o.scale : 1.0f / sqrtf((float)K);
    qkv_tensor *y = qkv_tensor_new(g, 3, (int[]){B, T, d});
    float *A = attend(
        g, view_packed(q->data, q, q_col, K), view_packed(k->data, k, k_col, K),
        view_packed(v->data, v, v_col, K), view_packed(y->data, y, 0, K), B,
        heads, T, S, K, T, scale, &o);
    qkv_node *nd = qkv_record(g, QKV_OP_ATTENTION, y, q, k, v);
    if (nd) {
        nd->s.attention.p = A;
        nd->s.attention.scale = scale;
        nd->s.attention.heads = heads;
        nd->s.attention.packed = 1;
        nd->s.attention.col[0] = q_col;
        nd->s.attention.col[1] = k_col;
        nd->s.attention.col[2] = v_col;
    }
    return y;
}

void qkv_attention_rows(qkv_graph *g, qkv_heads q, qkv_heads k, qkv_heads v,
                        qkv_heads y, int B, int H, int T, int S, int K,
                        int T_full, const qkv_attn_opts *opts) {
    qkv_attn_opts o = {0};
    if (opts) o = *opts;
    QKV_CHECK(B >= 1 && H >= 1 && K >= 1 && T >= 1 && S >= 1 && T <= T_full &&
                  (!o.causal || T <= S),
              "attention_rows: B %d, H %d, T %d of %d, S %d, K %d", B, H, T,
              T_full, S, K);
    float scale = o.scale != 0.0f ? o.scale : 1.0f / sqrtf((float)K);
    heads_view vq = {q.data, q.sb, q.sh, q.ld}, vk = {k.data, k.sb, k.sh, k.ld},
               vv = {v.data, v.sb, v.sh, v.ld}, vy = {y.data, y.sb, y.sh, y.ld};
    attend(g, vq, vk, vv, vy, B, H, T, S, K, T_full, scale, &o);
}

int qkv_attention_plan(int T, int S, int K, int plan[3]) {
    int small = small_heads(T, S, K);
    plan[0] = small;
    plan[1] = small ? 0 : qkv_sgemm_k_groups(T, S, K); /* Q K^T */
    plan[2] = small ? 0 : qkv_sgemm_k_groups(T, K, S); /* A V */
    return 3;
}

/* Gradient buffers of q, k, v (NULL: not wanted) and whether each backward
 * product adds to its buffer (acc) or stores. One tensor may be two or three
 * of the inputs (self-attention: q = k = v, or one packed x W_QKV^T). A
 * fresh buffer is stored into only when its uses are disjoint blocks that
 * cover all of it, so every element is written exactly once; otherwise it is
 * zeroed and every product adds. */
static void attention_grads(qkv_graph *g, const qkv_node *nd, int width,
                            float *d[3], int acc[3]) {
    qkv_tensor *const *t = nd->in;
    const int *col = nd->s.attention.col;
    for (int i = 0; i < 3; i++) d[i] = NULL;
    for (int i = 0; i < 3; i++) {
        if (!t[i]->requires_grad || d[i]) continue;
        int disjoint = 1, uses = 0;
        for (int j = i; j < 3; j++) {
            if (t[j] != t[i]) continue;
            uses++;
            for (int l = i; l < j; l++)
                if (t[l] == t[i] &&
                    (!nd->s.attention.packed || abs(col[l] - col[j]) < width))
                    disjoint = 0;
        }
        int covers =
            nd->s.attention.packed ? uses * width == t[i]->shape[2] : 1;
        int a;
        float *buf = disjoint && covers ? qkv_grad_write(g, t[i], &a)
                                        : (a = 1, qkv_grad(g, t[i]));
        for (int j = i; j < 3; j++)
            if (t[j] == t[i]) d[j] = buf, acc[j] = a;
    }
}

void qkv_attention_backward(qkv_graph *g, qkv_node *nd) {
    /* Y = softmax(mask(scale Q K^T)) V  (see the top of this file) */
    qkv_tensor *q = nd->in[0], *k = nd->in[1], *v = nd->in[2], *y = nd->out;
    int packed = nd->s.attention.packed, H = nd->s.attention.heads;
    const int *col = nd->s.attention.col;
    int B = q->shape[0], T = packed ? q->shape[1] : q->shape[2];
    int S = packed ? k->shape[1] : k->shape[2];
    int K = packed ? y->shape[2] / H : q->shape[3];
    size_t ts = (size_t)T * S;
    const float *A = nd->s.attention.p;
    float scale = nd->s.attention.scale;
    /* Gradients are allocated here, before the threads start. */
    float *d[3];
    int acc[3];
    attention_grads(g, nd, H * K, d, acc);
    heads_view vq, vk, vv, dq, dk, dv, dy;
    if (packed) {
        vq = view_packed(q->data, q, col[0], K);
        vk = view_packed(k->data, k, col[1], K);
        vv = view_packed(v->data, v, col[2], K);
        dq = view_packed(d[0], q, col[0], K);
        dk = view_packed(d[1], k, col[1], K);
        dv = view_packed(d[2], v, col[2], K);
        dy = view_packed(y->grad, y, 0, K);
    } else {
        vq = view_4d(q->data, q);
        vk = view_4d(k->data, k);
        vv = view_4d(v->data, v);
        dq = view_4d(d[0], q);
        dk = view_4d(d[1], k);
        dv = view_4d(d[2], v);
        dy = view_4d(y->grad, y);
    }
    int small = small_heads(T, S, K), dp = dp_kind(g, T, S, K);
    /* dZ of a head is used only while that head is worked on: small heads
     * keep it in a thread's scratch block (in L1), others in the arena. */
    float *dZ =
        small ? NULL
              : qkv_arena_alloc(&g->arena, (size_t)B * H * ts * sizeof(float));
    int par = (size_t)B * H * ts * K > 65536;
    qkv_cut cut; /* the heads, by the threads' shares (threads.h) */
    qkv_share_cut(&cut, B * H, par ? qkv_get_threads() : 1,
                  QKV_SHARE_ATTENTION_BACK);
    QKV_OMP(omp parallel num_threads(cut.nt) if (par))
    for (int p = qkv_team_thread(); p < cut.nt; p += qkv_team_size()) {
        int lo, hi;
        qkv_share_range(&cut, p, &lo, &hi);
        for (int bh = lo; bh < hi; bh++) {
            int b = bh / H, h = bh % H;
            const float *Ab = A + bh * ts, *dYb = head_at(&dy, b, h);
            const float *Qb = head_at(&vq, b, h), *Kb = head_at(&vk, b, h),
                        *Vb = head_at(&vv, b, h);
            float *dZb = small ? scratch_dz : dZ + bh * ts;
            uint32_t *wa = words[0], *wb = words[1];
            size_t pk = (size_t)(K + 1) / 2, ps = (size_t)(S + 1) / 2, ld;
            prefetch_head(&dy, bh + 1, B * H, H, T, K);
            prefetch_head(&vq, bh + 1, B * H, H, T, K);
            prefetch_head(&vk, bh + 1, B * H, H, S, K);
            prefetch_head(&vv, bh + 1, B * H, H, S, K);
            if (d[2]) { /* dV += A^T dY: (S,T) x (T,K) */
                float *dVb = head_at(&dv, b, h);
                if (small && dp) { /* A^T's words: A's column pairs */
                    qkv_bf16_col_pairs(T, S, Ab, S, wa, up_vw(S));
                    qkv_bf16_col_pairs(T, K, dYb, dy.ld, wb, up_vw(K));
                    dp_product(dp, S, K, (T + 1) / 2, wa, 1, up_vw(S), wb,
                               up_vw(K), dVb, dv.ld, acc[2], NULL);
                } else if (small) {
                    const float *dYr =
                        vector_rows(dYb, dy.ld, T, K, scratch[0], &ld);
                    rows_product(S, K, T, Ab, 1, S, dYr, ld, dVb, dv.ld, acc[2],
                                 NULL);
                } else if (dp) {
                    qkv_gemm_bf16(1, 0, S, K, T, Ab, S, dYb, dy.ld, acc[2], dVb,
                                  dv.ld);
                } else {
                    qkv_sgemm_serial(1, 0, S, K, T, Ab, S, dYb, dy.ld, acc[2],
                                     dVb, dv.ld);
                }
            }
            if (!d[0] && !d[1]) continue;
            /* dA = dY V^T: (T,K) x (S,K)^T, then the softmax backward
             * dZ = A * (dA - rowsum(dA * A)) * scale (in registers when small);
             * hidden keys have A = 0, so their dZ is 0 */
            if (small) {
                rows_epilogue e = {EPI_SOFTMAX_GRAD, T, S, 0, scale, NULL, Ab};
                if (dp) {
                    qkv_bf16_row_pairs(T, K, dYb, dy.ld, wa, pk);
                    qkv_bf16_row_pairs_t(S, K, Vb, vv.ld, wb, up_vw(S));
                    dp_product(dp, T, S, pk, wa, pk, 1, wb, up_vw(S), dZb, S, 0,
                               &e);
                } else {
                    const float *Vt =
                        transposed(Vb, vv.ld, S, K, scratch[0], &ld);
                    rows_product(T, S, K, dYb, dy.ld, 1, Vt, ld, dZb, S, 0, &e);
                }
            } else {
                if (dp)
                    qkv_gemm_bf16(0, 1, T, S, K, dYb, dy.ld, Vb, vv.ld, 0, dZb,
                                  S);
                else
                    qkv_sgemm_serial(0, 1, T, S, K, dYb, dy.ld, Vb, vv.ld, 0,
                                     dZb, S);
                for (int i = 0; i < T; i++) {
                    const float *a = Ab + (size_t)i * S;
                    float *z = dZb + (size_t)i * S, dot = qkv_vdot(a, z, S);
                    for (int j = 0; j < S; j++)
                        z[j] = a[j] * (z[j] - dot) * scale;
                }
            }
            if (d[0]) { /* dQ += dZ K: (T,S) x (S,K) */
                float *dQb = head_at(&dq, b, h);
                if (small && dp) {
                    qkv_bf16_row_pairs(T, S, dZb, S, wa, ps);
                    qkv_bf16_col_pairs(S, K, Kb, vk.ld, wb, up_vw(K));
                    dp_product(dp, T, K, ps, wa, ps, 1, wb, up_vw(K), dQb,
                               dq.ld, acc[0], NULL);
                } else if (small) {
                    const float *Kr =
                        vector_rows(Kb, vk.ld, S, K, scratch[0], &ld);
                    rows_product(T, K, S, dZb, S, 1, Kr, ld, dQb, dq.ld, acc[0],
                                 NULL);
                } else if (dp) {
                    qkv_gemm_bf16(0, 0, T, K, S, dZb, S, Kb, vk.ld, acc[0], dQb,
                                  dq.ld);
                } else {
                    qkv_sgemm_serial(0, 0, T, K, S, dZb, S, Kb, vk.ld, acc[0],
                                     dQb, dq.ld);
                }
            }
            if (d[1]) { /* dK += dZ^T Q: (S,T) x (T,K) */
                float *dKb = head_at(&dk, b, h);
                if (small && dp) { /* dZ^T's words: dZ's column pairs */
                    qkv_bf16_col_pairs(T, S, dZb, S, wa, up_vw(S));
                    qkv_bf16_col_pairs(T, K, Qb, vq.ld, wb, up_vw(K));
                    dp_product(dp, S, K, (T + 1) / 2, wa, 1, up_vw(S), wb,
                               up_vw(K), dKb, dk.ld, acc[1], NULL);
                } else if (small) {
                    const float *Qr =
                        vector_rows(Qb, vq.ld, T, K, scratch[0], &ld);
                    rows_product(S, K, T, dZb, 1, S, Qr, ld, dKb, dk.ld, acc[1],
                                 NULL);
                } else if (dp) {
                    qkv_gemm_bf16(1, 0, S, K, T, dZb, S, Qb, vq.ld, acc[1], dKb,
                                  dk.ld);
                } else {
                    qkv_sgemm_serial(1, 0, S, K, T, dZb, S, Qb, vq.ld, acc[1],
                                     dKb, dk.ld);
                }
            }
        }
        qkv_share_done(&cut, p);
    }
    qkv_share_learn(&cut);
}
