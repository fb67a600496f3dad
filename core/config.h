/* config.h - a config struct described once, as a table of its fields.
 *
 * Each field of a config (the model's, the optimiser's, a command's
 * settings) is one row: its JSON key, its command-line flag, its type, where
 * it lives in the struct, the range a value must lie in, the names of an
 * enum's values and a line of help. From that one table come the JSON a
 * checkpoint or config.json holds and its strict reading, the command-line
 * flags with their help, range checks and enum parsing (examples/cli), and
 * the comparison of two configs. Adding an option is one row plus its use.
 *
 *   static const qkv_field fields[] = {
 *       QKV_INT_FIELD(my_config, "width", "width", 1, 4096, "the width"),
 *       QKV_ENUM_FIELD(my_config, kind, "kind", "small|big", "the kind"),
 *   };
 *   char *json = qkv_config_to_json(fields, 2, &c);          // free() it
 *   if (qkv_config_from_json(fields, 2, &c, json, 1, err, sizeof err)) ...
 *
 * Errors follow the library's convention (common.h): 0, or -1 and one line
 * in err naming the field.
 */
#ifndef QKV_CONFIG_H
#define QKV_CONFIG_H

#include <stddef.h>

typedef enum qkv_field_type {
    QKV_FIELD_INT,   /* int */
    QKV_FIELD_FLOAT, /* float */
    QKV_FIELD_BOOL,  /* int, 0 or 1; JSON true/false */
    QKV_FIELD_ENUM,  /* int (an enum), the index of its name in choices */
    QKV_FIELD_STR    /* const char *, not owned */
} qkv_field_type;

typedef struct qkv_field {
    const char *key;  /* JSON key */
    const char *flag; /* command-line flag without "--"; NULL: not a flag */
    qkv_field_type type;
    size_t offset; /* of the member in its struct */
    /* INT, FLOAT: the range a value given as a flag must lie in, inclusive
     * (lo == hi == 0: any int, or any finite float). Reading JSON checks
     * types only: the config's own check (qkv_model_declare, ...) owns the
     * ranges of what a file says. */
    double lo, hi;
    const char *choices; /* ENUM: "a|b|c" (value 0, 1, 2) */
    const char *help;
} qkv_field;

#define QKV_FIELD_(T, m, key, flag, type, lo, hi, choices, help)               \
    { key, flag, type, offsetof(T, m), lo, hi, choices, help }
#define QKV_INT_FIELD(T, m, key, flag, lo, hi, help)                           \
    QKV_FIELD_(T, m, key, flag, QKV_FIELD_INT, lo, hi, NULL, help)
#define QKV_FLOAT_FIELD(T, m, key, flag, lo, hi, help)                         \
    QKV_FIELD_(T, m, key, flag, QKV_FIELD_FLOAT, lo, hi, NULL, help)
#define QKV_BOOL_FIELD(T, m, key, flag, help)                                  \
    QKV_FIELD_(T, m, key, flag, QKV_FIELD_BOOL, 0, 0, NULL, help)
#define QKV_ENUM_FIELD(T, m, key, flag, choices, help)                         \
    QKV_FIELD_(T, m, key, flag, QKV_FIELD_ENUM, 0, 0, choices, help)

/* The JSON object of the n fields of obj, malloc'd (free()). Floats are
 * written with the fewest digits that read back to the same float (0.1f is
 * 0.1), enums as their names, bools as true/false. */
char *qkv_config_to_json(const qkv_field *f, int n, const void *obj);
/* The same fields added to the cJSON object o (a cJSON *). */
void qkv_config_add_json(void *o, const qkv_field *f, int n, const void *obj);

/* Reads the JSON object text into obj's fields, each checked for its type
 * (ints integral, floats finite, enums one of their names). strict: every
 * field present exactly once and no other key; else the fields present are
 * set and other keys ignored. On error obj is unchanged. */
int qkv_config_from_json(const qkv_field *f, int n, void *obj, const char *json,
                         int strict, char *err, size_t errlen);
/* The same from a parsed object (a const cJSON *); STR fields then point
 * into it. */
int qkv_config_from_cjson(const qkv_field *f, int n, void *obj, const void *j,
                          int strict, char *err, size_t errlen);

/* The field's value as text ("0.002", "post", "true"), into buf. */
void qkv_field_format(const qkv_field *f, const void *obj, char *buf,
                      size_t cap);

/* The first of the n fields in which a and b differ (skipping those whose
 * key is in skip, a NULL-terminated list or NULL): "d_model is 32 in the
 * file but 64 here" in msg, and 1; or 0 if none does. */
int qkv_config_diff(const qkv_field *f, int n, const void *a, const void *b,
                    const char *const *skip, char *msg, size_t len);

/* The double with the fewest significant digits that reads back as exactly
 * f (0.1f is 0.1): what a JSON writer should print for a float. */
double qkv_float_shortest(float f);

/* A row by key, or NULL. */
const qkv_field *qkv_config_find(const qkv_field *f, int n, const char *key);

#endif
