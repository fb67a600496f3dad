# bench/lib.sh - the helpers the bench scripts share (sourced by run.sh,
# mpi.sh and amx.sh).

# the value of KEY in a line of key=value pairs: get "$LINE" KEY
get() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
# the median of the numbers on stdin, one a line
median() { sort -g | awk '{l[NR] = $1} END {print l[int((NR + 1) / 2)]}'; }
# bench_train --profile's lines of two or three runs side by side, ms per
# step per part, the last run's time over the first's and its share of its
# step: profile_table NAME1 "$OUT1" NAME2 "$OUT2" [NAME3 "$OUT3"]
profile_table() {
    n=0
    while [ $# -ge 2 ]; do
        n=$((n + 1))
        echo "$2" | sed -n "s/^profile /$n $1 /p"
        shift 2
    done | awk '
    {
        s = $1; name[s] = $2; part = ""; ms = ""
        for (i = 3; i <= NF; i++) {
            split($i, kv, "=")
            if (kv[1] == "part") part = kv[2]
            if (kv[1] == "ms") ms = kv[2]
        }
        if (!(part in seen)) { seen[part] = 1; order[++np] = part }
        v[s, part] = ms; if (s > ns) ns = s
    }
    END {
        printf "%-16s", "part"
        for (s = 1; s <= ns; s++) printf " %12s", name[s] "_ms"
        printf " %14s %8s\n", name[ns] "/" name[1], "share"
        for (i = 1; i <= np; i++) {
            p = order[i]
            printf "%-16s", p
            for (s = 1; s <= ns; s++)
                printf " %12s", (s, p) in v ? sprintf("%.2f", v[s, p]) : "-"
            a = v[1, p]; b = v[ns, p]; st = v[ns, "step"]
            r = (a > 0 && b != "") ? sprintf("%.3f", b / a) : "-"
            sh = (p != "step" && st > 0 && b != "") ? sprintf("%.1f%%", 100 * b / st) : ""
            printf " %14s %8s\n", r, sh
        }
    }'
}
