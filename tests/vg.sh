#!/bin/sh
# Runs one test program under valgrind memcheck; any error or leak fails it.
exec valgrind -q --leak-check=full --show-leak-kinds=definite,indirect \
    --errors-for-leak-kinds=definite,indirect \
    --error-exitcode=99 "$@"
