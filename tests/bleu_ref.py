"""Reference values for tests/test_bleu.c: the 13a tokenizer as sacreBLEU's
tokenizer_13a.py states it (regular expressions run by Python's re), and
corpus BLEU by nltk's corpus_bleu with SmoothingFunction().method3 (the
'exp' smoothing of mteval-v13a.pl and sacreBLEU).

    /usr/bin/python3 tests/bleu_ref.py ['TEXT' ...]   # BLEU of A, B, C; 13a of TEXT
"""
import re, sys
from nltk.translate.bleu_score import corpus_bleu, SmoothingFunction
def tok13a(line):  # sacreBLEU's tokenizer_13a.py rules, written out
    line = line.replace('<skipped>', '').replace('-\n', '').replace('\n', ' ')
    line = line.replace('&quot;', '"').replace('&amp;', '&').replace('&lt;', '<').replace('&gt;', '>')
    line = f' {line} '
    for r, s in [(r'([\{-\~\[-\` -\&\(-\+\:-\@\/])', r' \1 '), (r'([^0-9])([\.,])', r'\1 \2 '),
                 (r'([\.,])([^0-9])', r' \1 \2'), (r'([0-9])(-)', r'\1 \2 ')]:
        line = re.sub(r, s, line)
    return ' '.join(line.split())
def bleu(hyps, refs):
    return corpus_bleu([[tok13a(r).split()] for r in refs], [tok13a(h).split() for h in hyps],
                       smoothing_function=SmoothingFunction().method3)
if __name__ == '__main__':
    A = (["The cat sat on the mat.", "It cost $3.5 million, or 1,000 times more!", "He said &quot;no&quot; on 2001-03-03."],
         ["The cat is on the mat.", "It cost 3.5 million dollars, or 1,000 times more.", "She said \"no\" on 2001-03-03 & left."])
    B = (["a b c d e f", "x y z w"], ["a b x c y d", "x q z w"])
    C = (["one two three four five"], ["one two three four five six seven eight nine ten"])
    for name, (h, r) in [("A", A), ("B", B), ("C", C)]:
        print(name, repr(bleu(h, r)))
    for s in sys.argv[1:]: print(repr(tok13a(s)))
