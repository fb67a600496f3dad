/* test_oplist.c - the op list (QKV_OPS in tape.h) and the table generated
 * from it: every op has a backward and a unique printable name, and the
 * list, the enum and the table agree. */
#include <ctype.h>

#include "op_table.h"
#include "test.h"

/* The list's length, counted from the list itself. */
#define COUNT_(E, name) +1
enum { N_LISTED = 0 QKV_OPS(COUNT_) };
#undef COUNT_

/* "MATMUL" per op, to match against its name "matmul". */
#define ENUM_NAME_(E, name) [QKV_OP_##E] = #E,
static const char *const enum_names[QKV_OP_COUNT] = {QKV_OPS(ENUM_NAME_)};
#undef ENUM_NAME_

static void test_count(void) {
    CHECK((int)N_LISTED == (int)QKV_OP_COUNT,
          "QKV_OPS has %d lines, QKV_OP_COUNT = %d", (int)N_LISTED,
          (int)QKV_OP_COUNT);
    CHECK(QKV_OP_MATMUL == 0 && QKV_OP_MEAN == QKV_OP_COUNT - 1,
          "the enum starts at matmul and ends at mean, in list order");
}

static void test_every_op_has_a_backward(void) {
    for (int k = 0; k < QKV_OP_COUNT; k++)
        CHECK(qkv_op_table[k].backward != NULL, "op %d (%s) has no backward", k,
              enum_names[k] ? enum_names[k] : "?");
}

static void test_names(void) {
    for (int k = 0; k < QKV_OP_COUNT; k++) {
        const char *name = qkv_op_table[k].name, *e = enum_names[k];
        CHECK(name && name[0], "op %d has no name", k);
        if (!name || !e) continue;
        CHECK(qkv_op_name((qkv_op)k) == name, "qkv_op_name(%d) is not row %d",
              k, k);
        /* QKV_OP_SPLIT_HEADS prints as "split_heads": the names qkv train
         * --profile prints are the enum's, lowercased */
        size_t i = 0;
        while (name[i] && e[i] && name[i] == tolower((unsigned char)e[i])) i++;
        CHECK(!name[i] && !e[i], "QKV_OP_%s is named \"%s\"", e, name);
        for (int j = 0; j < k; j++)
            CHECK(!qkv_op_table[j].name || strcmp(qkv_op_table[j].name, name),
                  "ops %d and %d are both named \"%s\"", j, k, name);
    }
    CHECK(!strcmp(qkv_op_name(QKV_OP_COUNT), "?"), "out of range: \"?\"");
}

int main(void) {
    test_prog = "oplist";
    RUN(test_count);
    RUN(test_every_op_has_a_backward);
    RUN(test_names);
    return test_summary();
}
