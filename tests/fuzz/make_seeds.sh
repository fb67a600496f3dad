#!/bin/sh
# make fuzz-seeds: remakes the seed corpora of the fuzz harnesses, each a
# folder of small inputs that the fuzzer starts from and mutates:
#   ckpt/   checkpoints written by qkv train: a task (Adam state), a char
#           corpus (decoder-only, SGD: no optimiser tensors), a word corpus
#           (AdamW); tiny models (d_model 4), a few steps
#   tsv/    a few lines of the shipped corpora, and files that must be
#           refused (no tab, two tabs, an empty side, bad UTF-8, a NUL) or
#           that test the edges (CRLF, byte-order mark, blank lines)
#   json/   the model and optimiser configs those checkpoints store, their
#           runs' config.json (saved settings), and broken ones
#   flags/  command lines, one argument per NUL-terminated string
#   spm/    SentencePiece models by spm_train (apt-get install
#           sentencepiece) with qkv's ids, unigram and BPE, one with
#           SentencePiece's default ids, a model cut short, a text file
#   text/   the head of a shipped text, and plain texts that must be refused
#           (bad UTF-8: overlong, a lone continuation byte, a cut sequence,
#           a surrogate; a NUL; empty) or that test the edges (byte-order
#           mark, CRLF, no final newline, one character)
# Checkpoints store their training time and SentencePiece models their
# input's temporary path, so they differ a little each time.
#
#   sh tests/fuzz/make_seeds.sh build/examples/qkv tests/fuzz/corpus
set -eu
qkv=$1
out=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for d in ckpt tsv json flags text spm; do
    rm -rf "${out:?}/$d"
    mkdir -p "$out/$d"
done

# ---- checkpoints, from three small runs
tiny="--N 1 --h 2 --d-model 4 --d-ff 4 --steps 3 --batch 4 --eval-size 4"
head -n 12 data/corpora/dates/train.tsv >"$tmp/dates.tsv"
head -n 6 data/corpora/grammar/train.tsv >"$tmp/grammar.tsv"
# shellcheck disable=SC2086 # $tiny is a list of flags
{
    "$qkv" train --task reverse --vocab 6 --min-len 2 --max-len 4 $tiny \
        --quiet --out "$tmp/task"
    "$qkv" train --data "$tmp/dates.tsv" --tok char --model decoder \
        --optim sgd --pos learned --norm pre --act gelu $tiny --quiet \
        --out "$tmp/dates"
    "$qkv" train --data "$tmp/grammar.tsv" --valid "$tmp/grammar.tsv" \
        --optim adamw $tiny --quiet --out "$tmp/grammar"
} >/dev/null
for run in task dates grammar; do
    cp "$tmp/$run/ckpt.safetensors" "$out/ckpt/$run.safetensors"
    cp "$tmp/$run/config.json" "$out/json/settings-$run.json"
done

# ---- JSON: the "model" and "optim" metadata of the checkpoints (JSON
# strings inside the safetensors header: unescaped \" is all they need)
meta() { # FILE KEY: the metadata string KEY of checkpoint FILE
    n=$(head -c 8 "$1" | od -An -tu8 | tr -d ' ')
    tail -c +9 "$1" | head -c "$n" |
        sed -n 's/.*"'"$2"'":"\(\([^"\\]\|\\.\)*\)".*/\1/p' | sed 's/\\"/"/g'
}
for run in task dates grammar; do
    meta "$out/ckpt/$run.safetensors" model >"$out/json/model-$run.json"
    meta "$out/ckpt/$run.safetensors" optim >"$out/json/optim-$run.json"
done
printf '{"kind":"decoder","src_vocab":1e300,"d_model":-0,"x":[{}]}' \
    >"$out/json/model-bad.json"
printf '{"kind":"sgd","momentum":0.9,"nesterov":true,"eps":"1e-8"' \
    >"$out/json/optim-truncated.json"

# ---- TSV
cp "$tmp/dates.tsv" "$out/tsv/dates.tsv"
cp "$tmp/grammar.tsv" "$out/tsv/grammar.tsv"
printf '\357\273\277a b\tc d\r\n\n  \t x\r\nüñí ©ode\t日本語\n<unk> <pad>\t<eos>\n' \
    >"$out/tsv/edges.tsv"
printf 'no tab here\n' >"$out/tsv/no-tab.tsv"
printf 'a\tb\tc\n' >"$out/tsv/two-tabs.tsv"
printf 'a\t\n' >"$out/tsv/empty-side.tsv"
printf 'a\tb\nbad \300\200 utf-8\tx\n' >"$out/tsv/bad-utf8.tsv"
printf 'a\tb\000c\n' >"$out/tsv/nul.tsv"

# ---- plain text (qkv train --text)
head -n 40 data/text/gnu-licenses.txt >"$out/text/licenses.txt"
printf '\357\273\277one line\r\ntwo  words\n\n\tüñí ©ode 日本語 🙂\n' \
    >"$out/text/edges.txt"
printf 'no final newline' >"$out/text/no-newline.txt"
printf 'x' >"$out/text/one-char.txt"
printf 'ok\nbad \300\200 overlong\n' >"$out/text/overlong.txt"
printf 'a \200 lone continuation\n' >"$out/text/continuation.txt"
printf 'cut \342\202' >"$out/text/cut.txt"
printf 'surrogate \355\240\200\n' >"$out/text/surrogate.txt"
printf 'a\000b\n' >"$out/text/nul.txt"
: >"$out/text/empty.txt"

# ---- SentencePiece models (identity normalisation, as qkv trains them,
# keeps them small)
cut -f2 data/corpora/grammar/valid.tsv >"$tmp/spm.txt"
spm() { # NAME FLAG...: a model of 40 pieces on the grammar targets
    name=$1
    shift
    spm_train --input="$tmp/spm.txt" --model_prefix="$tmp/$name" \
        --vocab_size=40 --normalization_rule_name=identity \
        --num_threads=1 --minloglevel=3 "$@" >/dev/null 2>&1
    cp "$tmp/$name.model" "$out/spm/$name.model"
}
ids="--pad_id=0 --bos_id=1 --eos_id=2 --unk_id=3"
# shellcheck disable=SC2086 # $ids is a list of flags
{
    spm unigram --model_type=unigram $ids
    spm bpe --model_type=bpe $ids
}
spm default-ids --model_type=unigram
head -c 200 "$out/spm/unigram.model" >"$out/spm/cut.model"
head -n 3 "$tmp/spm.txt" >"$out/spm/text.model"

# ---- command lines (printf repeats '%s\0' for each argument)
args() { # NAME ARG...: the NUL-separated command line NAME
    name=$1
    shift
    printf '%s\0' "$@" >"$out/flags/$name"
}
args task --task sort --vocab 20 --N=2 --h 4 --d-model 64 --steps 100
args corpus --data train.tsv --tok char --model=decoder --lr 3e-4 --dropout \
    0.1 --clip 0 --force --quiet
args positional run1 run2 - --seed -7 --weight-decay=0 --label-smoothing 1
args help --lr 1e-3 --help
args bad-value --batch 0x10 --lr -1 --optim adagrad
args missing-value --d-model
