#!/usr/bin/python3
"""make_corpora.py - generates qkv's two toy translation corpora.

    /usr/bin/python3 data/gen/make_corpora.py [OUTDIR]     (default data/corpora)

writes OUTDIR/dates/{train,valid,test}.tsv and OUTDIR/grammar/{...}.tsv,
20000 / 1000 / 1000 pairs each, `source<TAB>target` per line, UTF-8, "\n"
line ends. Python 3 standard library only; the output is the same on every
run (fixed seeds, no dependence on hash order). Every source sentence is
unique across the three splits of a corpus, and each source has exactly one
target, so no test (or valid) pair appears in train.

dates (read it character by character): a date written by a person in one of
  15 styles -> ISO 8601.  "Tuesday 3 March 1987", "the 3rd of march, 1987",
  "03/03/87" ... -> "1987-03-03". Dates lie in 1950..2049 so a two-digit year
  is never ambiguous (50..99 -> 19xx, 00..49 -> 20xx); slashes are always
  month/day/year (US) and dots day.month.year (European), so every source has
  one answer. Weekdays are the true ones.

grammar (read it word by word): a small English -> German fragment with
  gender and case agreement (der/den/die/das, ein/einen/eine, kein for
  negated indefinites, adjective endings -e/-en/-er/-es), verb agreement
  (ich sehe, du siehst, er sieht, wir sehen), verb-second order after a fronted
  adverb ("heute sieht der hund ..."), the participle at the end of the
  clause in the perfect ("... hat die katze gesehen"), and the finite verb at
  the end of "weil" / "dass" clauses. Punctuation is split off as its own
  word; everything is lower case.
"""

import datetime
import os
import random
import sys

N_TRAIN, N_VALID, N_TEST = 20000, 1000, 1000

# --------------------------------------------------------------------- dates

MONTHS = ["January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
        "Sunday"]
ORD_WORDS = ["first", "second", "third", "fourth", "fifth", "sixth",
             "seventh", "eighth", "ninth", "tenth", "eleventh", "twelfth",
             "thirteenth", "fourteenth", "fifteenth", "sixteenth",
             "seventeenth", "eighteenth", "nineteenth", "twentieth",
             "twenty-first", "twenty-second", "twenty-third", "twenty-fourth",
             "twenty-fifth", "twenty-sixth", "twenty-seventh",
             "twenty-eighth", "twenty-ninth", "thirtieth", "thirty-first"]


def ordinal(d):
    if 11 <= d <= 13:
        return "%dth" % d
    return "%d%s" % (d, {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th"))


# Each style: (template, may change case). Fields: d dd m mm Y yy Month Mon
# MON Day Dy ord ordw.
DATE_STYLES = [
    ("{d} {Month} {Y}", True),
    ("{Month} {d}, {Y}", True),
    ("{ord} of {Month} {Y}", True),
    ("the {ord} of {Month}, {Y}", True),
    ("{Day} {d} {Month} {Y}", True),
    ("{Day}, {Month} {d}, {Y}", True),
    ("{Dy}, {d} {Mon} {Y}", True),
    ("{mm}/{dd}/{Y}", False),
    ("{m}/{d}/{yy}", False),
    ("{dd}.{mm}.{Y}", False),
    ("{d}.{m}.{yy}", False),
    ("{dd}-{MON}-{Y}", False),
    ("{Mon} {ord} '{yy}", True),
    ("the {ordw} of {Month} {Y}", True),
    ("{Month} the {ordw}, {Y}", True),
]


def date_pair(rng):
    first = datetime.date(1950, 1, 1).toordinal()
    last = datetime.date(2049, 12, 31).toordinal()
    day = datetime.date.fromordinal(rng.randint(first, last))
    template, recase = DATE_STYLES[rng.randrange(len(DATE_STYLES))]
    month = MONTHS[day.month - 1]
    weekday = DAYS[day.weekday()]
    src = template.format(
        d=day.day, dd="%02d" % day.day, m=day.month, mm="%02d" % day.month,
        Y=day.year, yy="%02d" % (day.year % 100), Month=month,
        Mon=month[:3], MON=month[:3].upper(), Day=weekday, Dy=weekday[:3],
        ord=ordinal(day.day), ordw=ORD_WORDS[day.day - 1])
    if recase:
        r = rng.random()
        src = src.lower() if r < 0.3 else src.upper() if r < 0.4 else src
    return src, day.isoformat()


# ------------------------------------------------------------------- grammar

# (english singular, english plural, gender m/f/n, german singular, plural)
NOUNS = [
    ("dog", "dogs", "m", "hund", "hunde"),
    ("cat", "cats", "f", "katze", "katzen"),
    ("house", "houses", "n", "haus", "häuser"),
    ("man", "men", "m", "mann", "männer"),
    ("woman", "women", "f", "frau", "frauen"),
    ("child", "children", "n", "kind", "kinder"),
    ("book", "books", "n", "buch", "bücher"),
    ("car", "cars", "n", "auto", "autos"),
    ("teacher", "teachers", "m", "lehrer", "lehrer"),
    ("bird", "birds", "m", "vogel", "vögel"),
    ("apple", "apples", "m", "apfel", "äpfel"),
    ("flower", "flowers", "f", "blume", "blumen"),
    ("city", "cities", "f", "stadt", "städte"),
    ("boat", "boats", "n", "boot", "boote"),
    ("friend", "friends", "m", "freund", "freunde"),
    ("table", "tables", "m", "tisch", "tische"),
    ("ball", "balls", "m", "ball", "bälle"),
    ("girl", "girls", "n", "mädchen", "mädchen"),
    ("horse", "horses", "n", "pferd", "pferde"),
    ("door", "doors", "f", "tür", "türen"),
]
ADJS = [("small", "klein"), ("big", "groß"), ("red", "rot"), ("old", "alt"),
        ("young", "jung"), ("new", "neu"), ("beautiful", "schön"),
        ("black", "schwarz"), ("white", "weiß"), ("loud", "laut")]
# (base, 3sg, participle, german 1sg 2sg 3sg 1pl 2pl 3pl, german participle)
VERBS = [
    ("see", "sees", "seen",
     "sehe siehst sieht sehen seht sehen", "gesehen"),
    ("like", "likes", "liked", "mag magst mag mögen mögt mögen", "gemocht"),
    ("find", "finds", "found",
     "finde findest findet finden findet finden", "gefunden"),
    ("buy", "buys", "bought",
     "kaufe kaufst kauft kaufen kauft kaufen", "gekauft"),
    ("hear", "hears", "heard", "höre hörst hört hören hört hören", "gehört"),
    ("visit", "visits", "visited",
     "besuche besuchst besucht besuchen besucht besuchen", "besucht"),
    ("paint", "paints", "painted", "male malst malt malen malt malen",
     "gemalt"),
    ("carry", "carries", "carried",
     "trage trägst trägt tragen tragt tragen", "getragen"),
    ("need", "needs", "needed",
     "brauche brauchst braucht brauchen braucht brauchen", "gebraucht"),
    ("love", "loves", "loved", "liebe liebst liebt lieben liebt lieben",
     "geliebt"),
    ("ask", "asks", "asked", "frage fragst fragt fragen fragt fragen",
     "gefragt"),
    ("draw", "draws", "drawn",
     "zeichne zeichnest zeichnet zeichnen zeichnet zeichnen", "gezeichnet"),
    ("wash", "washes", "washed",
     "wasche wäschst wäscht waschen wascht waschen", "gewaschen"),
    ("know", "knows", "known", "kenne kennst kennt kennen kennt kennen",
     "gekannt"),
]
HABEN = "habe hast hat haben habt haben".split()
# verbs that take a "that" clause: (base, 3sg, german forms)
SAY_VERBS = [("know", "knows", "weiß weißt weiß wissen wisst wissen"),
             ("think", "thinks", "glaube glaubst glaubt glauben glaubt glauben"),
             ("say", "says", "sage sagst sagt sagen sagt sagen")]
# person index into the german forms: 0 ich, 1 du, 2 er/sie/es, 3 wir, 5 sie
PRONOUNS = [("i", "me", 0, "ich", "mich"), ("you", "you", 1, "du", "dich"),
            ("he", "him", 2, "er", "ihn"), ("she", "her", 2, "sie", "sie"),
            ("it", "it", 2, "es", "es"), ("we", "us", 3, "wir", "uns"),
            ("they", "them", 5, "sie", "sie")]
ADVERBS_PRESENT = [("today", "heute"), ("now", "jetzt"),
                   ("tomorrow", "morgen"), ("often", "oft")]
ADVERBS_PERFECT = [("today", "heute"), ("this week", "diese woche"),
                   ("this year", "dieses jahr")]

# article forms [nominative, accusative] by gender (p = plural)
ARTICLES = {
    "the": {"m": ["der", "den"], "f": ["die", "die"], "n": ["das", "das"],
            "p": ["die", "die"]},
    "a": {"m": ["ein", "einen"], "f": ["eine", "eine"], "n": ["ein", "ein"]},
    "my": {"m": ["mein", "meinen"], "f": ["meine", "meine"],
           "n": ["mein", "mein"], "p": ["meine", "meine"]},
    "no": {"m": ["kein", "keinen"], "f": ["keine", "keine"],
           "n": ["kein", "kein"], "p": ["keine", "keine"]},
    "": {"p": ["", ""]},
}


def adj_ending(det, gender, case):
    """Weak endings after der/die/das, mixed after ein/mein/kein, strong
    with no article (plural only here); case 0 nominative, 1 accusative.
    det is the german determiner's english key: the, a, my, no, ""."""
    if gender == "p":
        return "e" if det == "" else "en"
    if det == "the":
        return "en" if (gender == "m" and case == 1) else "e"
    if gender == "m":
        return "er" if case == 0 else "en"
    return "e" if gender == "f" else "es"


def noun_phrase(rng):
    """A random noun phrase: (english words, realise(case, negated))."""
    en_sg, en_pl, gender, de_sg, de_pl = NOUNS[rng.randrange(len(NOUNS))]
    plural = rng.random() < 0.3
    det = rng.choice(["the", "my", ""] if plural else ["the", "a", "my"])
    adj = ADJS[rng.randrange(len(ADJS))] if rng.random() < 0.3 else None
    g = "p" if plural else gender
    english = [det] if det else []
    english += [adj[0]] if adj else []
    english += [en_pl if plural else en_sg]

    def realise(case, negated):
        d = "no" if negated and det in ("a", "") else det
        words = [ARTICLES[d][g][case]] if ARTICLES[d][g][case] else []
        if adj:
            words.append(adj[1] + adj_ending(d, g, case))
        words.append(de_pl if plural else de_sg)
        return words

    person = 5 if plural else 2
    return english, realise, person, det in ("a", "")


def subject(rng):
    """(english words, german words, person index, english 3sg?)"""
    if rng.random() < 0.35:
        en, _, person, de, _ = PRONOUNS[rng.randrange(len(PRONOUNS))]
        return [en], [de], person, en in ("he", "she", "it")
    english, realise, person, _ = noun_phrase(rng)
    return english, realise(0, False), person, person == 2


def clause(rng, kind, adverb):
    """kind "main" (verb second) or "sub" (verb last, after weil/dass).
    Returns (english words, german words)."""
    s_en, s_de, person, third = subject(rng)
    v = VERBS[rng.randrange(len(VERBS))]
    perfect = rng.random() < 0.35
    negated = rng.random() < 0.25
    if rng.random() < 0.25:  # pronoun object, never reflexive (i ... me)
        while True:
            _, o_en, p, _, o_de = PRONOUNS[rng.randrange(len(PRONOUNS))]
            if p != person or p in (2, 5):
                break
        o_en, o_de, indefinite = [o_en], [o_de], False
    else:
        o_en, realise, _, indefinite = noun_phrase(rng)
        o_de = realise(1, negated and indefinite)
    nicht = ["nicht"] if negated and not indefinite else []

    forms = v[3].split()
    if perfect:
        aux = "has" if third else "have"
        en = s_en + [aux] + (["not"] if negated else []) + [v[2]] + o_en
        fin, rest = HABEN[person], o_de + nicht + [v[4]]
    else:
        verb = v[1] if third else v[0]
        en = s_en + ([("does" if third else "do"), "not", v[0]] if negated
                     else [verb]) + o_en
        fin, rest = forms[person], o_de + nicht
    if kind == "sub":
        return en, s_de + rest + [fin]
    if adverb:
        a_en, a_de = rng.choice(ADVERBS_PERFECT if perfect
                                else ADVERBS_PRESENT)
        return a_en.split() + en, a_de.split() + [fin] + s_de + rest
    return en, s_de + [fin] + rest


def grammar_pair(rng):
    r = rng.random()
    if r < 0.6:
        en, de = clause(rng, "main", rng.random() < 0.3)
    elif r < 0.8:
        en1, de1 = clause(rng, "main", False)
        en2, de2 = clause(rng, "sub", False)
        en, de = en1 + [",", "because"] + en2, de1 + [",", "weil"] + de2
    else:
        s_en, s_de, person, third = subject(rng)
        say = SAY_VERBS[rng.randrange(len(SAY_VERBS))]
        en2, de2 = clause(rng, "sub", False)
        en = s_en + [say[1] if third else say[0], "that"] + en2
        de = s_de + [say[2].split()[person], ",", "dass"] + de2
    return " ".join(en + ["."]), " ".join(de + ["."])


# ---------------------------------------------------------------------- main

def write_corpus(outdir, name, make_pair, seed):
    rng = random.Random(seed)
    seen, pairs = set(), []
    total = N_TRAIN + N_VALID + N_TEST
    while len(pairs) < total:
        src, tgt = make_pair(rng)
        assert "\t" not in src + tgt and "\n" not in src + tgt
        if src not in seen:  # unique sources: the splits cannot overlap
            seen.add(src)
            pairs.append((src, tgt))
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    splits = [("train", pairs[:N_TRAIN]),
              ("valid", pairs[N_TRAIN:N_TRAIN + N_VALID]),
              ("test", pairs[N_TRAIN + N_VALID:])]
    for split, rows in splits:
        path = os.path.join(d, split + ".tsv")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for src, tgt in rows:
                f.write(src + "\t" + tgt + "\n")
        os.replace(tmp, path)  # never leave a half-written split behind
        print("%s: %d pairs" % (path, len(rows)))


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else "data/corpora"
    write_corpus(outdir, "dates", date_pair, 1987)
    write_corpus(outdir, "grammar", grammar_pair, 2024)


if __name__ == "__main__":
    main()
