# bench/lib.sh - the helpers the bench scripts share (sourced by run.sh,
# mpi.sh and amx.sh).

# the value of KEY in a line of key=value pairs: get "$LINE" KEY
get() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
# the median of the numbers on stdin, one a line
median() { sort -g | awk '{l[NR] = $1} END {print l[int((NR + 1) / 2)]}'; }
