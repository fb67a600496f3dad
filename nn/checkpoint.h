/* checkpoint.h - training checkpoints: one safetensors file (safetensors.h)
 * holding everything eval, decode and --resume need.
 *
 * Tensors: every model parameter under its dotted name (so torch/numpy see
 * the weights by name), and, when an optimiser is saved, its state as flat
 * (n) tensors "optim.m" and "optim.v" laid out like the parameter buffer
 * (only those the optimiser has: plain SGD none, SGD+momentum only m).
 * "__metadata__" (all values strings, as safetensors requires):
 *   "format"      "qkv-checkpoint-1"
 *   "model"       the model config as JSON (qkv_model_config_to_json)
 *   "step"        the training step, decimal
 *   "rng.model"   m->rng (dropout masks), always, as
 *                 {"state": "<decimal u64>", "inc": "<decimal u64>"}
 *   "rng.NAME"    each RNG the caller names (e.g. "data"), same form
 *   "optim"       the optimiser config as JSON (only with an optimiser)
 *   "optim_step"  its update count, decimal (only with an optimiser)
 *   "optim.params" the layout of optim.m / optim.v: a JSON array of
 *                 [name, numel] of the parameters in buffer order (only with
 *                 an optimiser; load refuses state laid out for other
 *                 parameters; files from before it was written load as they
 *                 did)
 *   ...           the caller's extra string pairs (vocabularies, command line)
 * u64s are decimal strings, never JSON numbers: those are doubles, exact only
 * to 2^53. Floats in the config JSON are written with the fewest digits that
 * read back to the same float (0.1f is "0.1").
 *
 * Saving is atomic (qkv_st_write): on failure the old file is untouched.
 * Loading validates everything before it touches the caller's structs and
 * refuses a bad file with one line naming it: not safetensors or truncated,
 * another program's file (no "format"), a bad config (the field named),
 * parameters missing, extra or of another shape, optimiser tensors of the
 * wrong size, a u64 that does not parse.
 *
 * Memory: load builds *m (and *opt) itself; the caller frees them with
 * qkv_model_free / qkv_optim_free. meta_out, if given, owns the metadata.
 *
 *   qkv_ckpt_rng rngs[1] = {{"data", &data_rng}};
 *   if (qkv_ckpt_save("run/ckpt.safetensors", &m, &opt, step, rngs, 1,
 *                     NULL, NULL, 0, err, sizeof err)) die(err);
 *   if (qkv_ckpt_load("run/ckpt.safetensors", &m, &opt, &step, rngs, 1,
 *                     NULL, err, sizeof err)) die(err);   // fresh m, opt
 */
#ifndef QKV_CHECKPOINT_H
#define QKV_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "optim.h"
#include "safetensors.h"

#define QKV_CKPT_FORMAT    "qkv-checkpoint-1"
#define QKV_WEIGHTS_FORMAT "qkv-weights-1"

/* ---- checkpoints ---- */

/* A named random generator to save or restore as metadata "rng.<name>".
 * The name "model" is taken by m->rng, which save and load handle
 * themselves (load must build m before it can restore m->rng). */
typedef struct qkv_ckpt_rng {
    const char *name;
    qkv_pcg32 *rng;
} qkv_ckpt_rng;

/* Writes m (allocated), opt (NULL: no optimiser state), the step (>= 0),
 * m->rng, the n_rngs RNGs and n_extra metadata pairs (keys must not be
 * "format", "model", "optim", "optim_step", "step" or start with "rng.").
 * Atomic. Returns 0, or -1 with one line naming path in err. */
int qkv_ckpt_save(const char *path, const qkv_model *m, const qkv_optim *opt,
                  int64_t step, const qkv_ckpt_rng *rngs, int n_rngs,
                  const char *const *keys, const char *const *values,
                  int n_extra, char *err, size_t errlen);

/* Reads and validates path, builds *m from the stored config and loads its
 * weights and m->rng. If opt is non-NULL: when the file has optimiser state,
 * *opt is initialised from the stored config with m, v and step restored;
 * when it has none, *opt is zeroed (opt->n == 0: start a fresh one). Each of
 * the n_rngs RNGs is restored from "rng.<name>" (missing: an error). *step
 * (if non-NULL) = the stored step. meta_out (if non-NULL) receives the file's
 * metadata (its tensors already freed): read it with qkv_st_meta, free with
 * qkv_st_free. On failure -1 with one line naming path in err; *m, *opt and
 * *meta_out are zeroed (nothing to free) and the RNGs and *step untouched. */
int qkv_ckpt_load(const char *path, qkv_model *m, qkv_optim *opt, int64_t *step,
                  const qkv_ckpt_rng *rngs, int n_rngs, qkv_st_file *meta_out,
                  char *err, size_t errlen);

/* Loads only the weights into an existing model m (fine-tuning, eval of a
 * model built from flags). Refuses a file whose config differs from m->cfg in
 * any field but dropout (naming the first such field), or whose tensors do
 * not match m's parameters; on refusal m is unchanged. m->rng and any
 * optimiser state in the file are ignored. */
int qkv_ckpt_load_weights(const char *path, qkv_model *m, char *err,
                          size_t errlen);

/* ---- weights only: exports, and files written by other programs ----
 *
 * A weights file is a safetensors file of the model's parameters under
 * their dotted names and nothing else (no optimiser state, no RNGs), with
 * metadata "format" = "qkv-weights-1", "model" = the config JSON, and the
 * caller's pairs (qkv export adds "data": what encodes and decodes text).
 * PyTorch writes the same with safetensors' save_file(tensors, path,
 * metadata={"format": "qkv-weights-1", "model": json.dumps(cfg), ...}), or
 * with no metadata at all and the config in a JSON file beside it:
 *
 *   {"model": {"kind": "encdec", "src_vocab": 11, ...}, "data": {...}}
 *
 * ("model": every field of qkv_model_config_to_json; other members are the
 * caller's).
 *
 *   if (qkv_weights_save("w.safetensors", &m, NULL, NULL, 0, err, sizeof err))
 *       die(err);
 *   if (qkv_weights_load("torch.safetensors", "config.json", &m, &meta, err,
 *                        sizeof err)) die(err);          // fresh m
 */

/* Writes m's parameters (registration order) and the metadata above plus
 * n_extra pairs (keys other than "format" and "model"). Atomic. Returns 0,
 * or -1 with one line naming path in err. */
int qkv_weights_save(const char *path, const qkv_model *m,
                     const char *const *keys, const char *const *values,
                     int n_extra, char *err, size_t errlen);

/* Builds *m from any file of qkv's weights by name: a checkpoint (its
 * optimiser state and RNGs ignored), a weights file, or, with config_path,
 * a safetensors file from anywhere (its own metadata then ignored) and the
 * model config in the JSON file config_path. Refuses, with one line naming
 * the file: no config (a file without qkv's "format" and no config_path), a
 * config that does not parse or is out of range (the field named), a
 * parameter missing, an extra tensor or a shape that differs (named), a
 * weight that is NaN or infinite. meta_out (if non-NULL) receives the
 * metadata the config came from: the file's, or config_path's top-level
 * members as strings (non-strings as compact JSON text); read it with
 * qkv_st_meta and free it with qkv_st_free. On failure *m and *meta_out
 * are zeroed. */
int qkv_weights_load(const char *path, const char *config_path, qkv_model *m,
                     qkv_st_file *meta_out, char *err, size_t errlen);

#endif
