/* safetensors.h - checkpoint files in the safetensors format (float32 only).
 *
 * A file is: an 8-byte little-endian unsigned header length N; N bytes of
 * UTF-8 JSON (padded with spaces so the data starts 8-byte aligned); the data
 * buffer. The JSON maps each tensor name to
 *   {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}
 * (byte offsets into the data buffer, end exclusive; shape [] is a scalar)
 * plus an optional "__metadata__" object of string -> string. PyTorch, numpy
 * and the `safetensors` package read what qkv writes, and the reverse.
 *
 * Writes are atomic: PATH.tmp.<pid> is written, fsynced and renamed over PATH,
 * then the directory is fsynced; on failure the temporary file is removed and
 * PATH is untouched (except a failed directory fsync, reported after the
 * rename: PATH then holds the new file). PATH.tmp.<pid> files of writers
 * that were killed (their process is gone) are removed first. Reads refuse
 * anything but a regular file without blocking on it (a FIFO, a device) and
 * a file larger than the memory qkv may use (io.h), and validate everything
 * before allocating tensor memory (sizes, offsets, shapes, dtype, overflow, the
 * tensors tiling the data buffer exactly) and refuse a bad file with one line
 * naming it and the fault.
 *
 * Every function returns 0 on success and -1 on failure with err->msg set.
 * A qkv_st_file owns its tensors, names and metadata; free with qkv_st_free.
 *
 *   qkv_st_error err;
 *   if (qkv_st_write_params("ckpt.safetensors", &ps, keys, vals, 2, &err))
 *       die(err.msg);
 *   qkv_st_file f;
 *   if (qkv_st_read("ckpt.safetensors", &f, &err) ||
 *       qkv_st_load_params(&f, &ps, "ckpt.safetensors", &err)) die(err.msg);
 *   const char *step = qkv_st_meta(&f, "step");  ...  qkv_st_free(&f);
 */
#ifndef QKV_SAFETENSORS_H
#define QKV_SAFETENSORS_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "tensor.h"

/* Header lengths above this are refused as absurd (as the reference reader). */
#define QKV_ST_MAX_HEADER 100000000u

/* One line, no trailing newline, e.g.
 * "ckpt.safetensors: header length 9999999 exceeds the file size 1234". */
typedef struct qkv_st_error {
    char msg[512];
} qkv_st_error;

/* ---- writing ---- */

typedef struct qkv_st_entry {
    const char *name;  /* unique, non-empty, not "__metadata__" */
    const float *data; /* numel values, row-major (may be NULL if numel is 0) */
    int ndim;          /* 0 (scalar) .. QKV_MAX_DIMS */
    int shape[QKV_MAX_DIMS];
} qkv_st_entry;

/* Writes count tensors (data in entry order) and meta_count metadata pairs
 * (no "__metadata__" key when meta_count is 0). Atomic; see above. */
int qkv_st_write(const char *path, const qkv_st_entry *entries, int count,
                 const char *const *meta_keys, const char *const *meta_values,
                 int meta_count, qkv_st_error *err);
/* Every parameter of an allocated store (names, shapes, values), in
 * registration order, plus metadata. */
int qkv_st_write_params(const char *path, const qkv_params *ps,
                        const char *const *meta_keys,
                        const char *const *meta_values, int meta_count,
                        qkv_st_error *err);

/* ---- reading ---- */

typedef struct qkv_st_tensor {
    char *name; /* owned */
    int ndim;   /* 0 .. QKV_MAX_DIMS */
    int shape[QKV_MAX_DIMS];
    size_t n;    /* product of shape (1 for a scalar) */
    float *data; /* (n) owned, 64-byte aligned, host byte order */
} qkv_st_tensor;

typedef struct qkv_st_file {
    qkv_st_tensor *tensors; /* count tensors, sorted by name */
    int count;
    cJSON *metadata; /* the "__metadata__" object (all values strings) or NULL;
                        owned */
} qkv_st_file;

/* Loads and validates the whole file. On failure *f is left empty (count 0),
 * so qkv_st_free(f) is safe either way. */
int qkv_st_read(const char *path, qkv_st_file *f, qkv_st_error *err);
/* Tensor by name (binary search), or NULL. */
const qkv_st_tensor *qkv_st_find(const qkv_st_file *f, const char *name);
/* Metadata value by key, or NULL if absent. Valid until qkv_st_free. */
const char *qkv_st_meta(const qkv_st_file *f, const char *key);
void qkv_st_free(qkv_st_file *f);

/* ps values = the tensors of f with the same names. Refuses, naming them, any
 * parameter missing from f, any tensor of f that ps lacks, and any shape
 * mismatch; on refusal ps is unchanged. path is only used in messages. */
int qkv_st_load_params(const qkv_st_file *f, qkv_params *ps, const char *path,
                       qkv_st_error *err);
/* Its checks alone, on a store whose buffers need not be allocated yet
 * (names and shapes are enough): 0, or -1 naming what differs. */
int qkv_st_check_params(const qkv_st_file *f, const qkv_params *ps,
                        const char *path, qkv_st_error *err);

#endif
