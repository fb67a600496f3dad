# Loss curve of a qkv run: gnuplot -c examples/loss.gp LOG.csv [OUT.png|dumb]
# Columns of log.csv: step,tokens,seconds,lr,train_loss,val_loss,val_acc
csv = ARG1
out = ARGC >= 2 ? ARG2 : "dumb"
if (out eq "dumb") {
    set terminal dumb size 100,28
} else {
    set terminal pngcairo size 900,520 font "sans,10"
    set output out
}
set datafile separator ","
set key top right
set xlabel "step"
set ylabel "cross-entropy"
set logscale y
set format y "%g"
set y2label "validation exact match"
set y2range [0:1]
set y2tics 0.25
set ytics nomirror
set grid
set title "qkv: ".csv noenhanced
plot csv using 1:5 every ::1 with lines lw 1 lc rgb "#9ecae1" title "train loss", \
     csv using 1:6 every ::1 with linespoints pt 7 ps 0.5 lc rgb "#08519c" title "val loss", \
     csv using 1:7 every ::1 axes x1y2 with linespoints pt 5 ps 0.5 lc rgb "#d94801" title "val exact match"
