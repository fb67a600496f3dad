// spm.cc - the C shim over libsentencepiece's C++ API (spm.h). Every entry
// point catches every exception and turns it, like a failed util::Status,
// into qkv's one-line error (common.h): nothing throws into C.
#include "spm.h"

extern "C" {
#include "common.h"
}

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

struct qkv_spm {
    sentencepiece::SentencePieceProcessor sp;
    std::string bytes; // the serialized ModelProto
};

namespace {

// The reason in a SentencePiece message, without the "./src/file.cc(660)
// [condition] " it may start with; "" if nothing is left.
std::string reason_of(const char *msg) {
    const char *cut = std::strstr(msg, ".cc(");
    if (cut && (cut = std::strstr(cut, "] ")))
        msg = cut + 2;
    else if (cut)
        msg = "";
    std::string s = msg;
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s;
}

// Writes "what: reason" (one line: control bytes become spaces) to err.
int fail(char *err, size_t errlen, const char *what, const std::string &why) {
    std::string s = std::string(what) + ": " + why;
    for (char &c : s)
        if ((unsigned char)c < 0x20 || c == 0x7f) c = ' ';
    return qkv_errf(err, errlen, "%s", s.c_str());
}

// The training sentences, read in order from the caller's array.
class array_iterator : public sentencepiece::SentenceIterator {
  public:
    array_iterator(const char *const *s, size_t n) : s_(s), n_(n) { load(); }
    bool done() const override { return i_ >= n_; }
    void Next() override {
        i_++;
        load();
    }
    const std::string &value() const override { return value_; }
    sentencepiece::util::Status status() const override { return {}; }

  private:
    void load() {
        if (i_ < n_) value_ = s_[i_];
    }
    const char *const *s_;
    size_t n_, i_ = 0;
    std::string value_;
};

// Loads m->bytes into m->sp and checks the special ids.
int load(qkv_spm *m, const char *name, char *err, size_t errlen) {
    auto st = m->sp.LoadFromSerializedProto(m->bytes);
    if (!st.ok()) {
        std::string why = reason_of(st.message());
        return fail(err, errlen, name,
                    "not a SentencePiece model" +
                        (why.empty() ? std::string() : " (" + why + ")"));
    }
    if (m->sp.pad_id() != 0 || m->sp.bos_id() != 1 || m->sp.eos_id() != 2 ||
        m->sp.unk_id() != 3)
        return qkv_errf(err, errlen,
                        "%s: the SentencePiece model has pad %d bos %d eos %d "
                        "unk %d, qkv needs 0 1 2 3 (spm_train --pad_id=0 "
                        "--bos_id=1 --eos_id=2 --unk_id=3)",
                        name, m->sp.pad_id(), m->sp.bos_id(), m->sp.eos_id(),
                        m->sp.unk_id());
    // Pieces travel as C strings (qkv_spm_piece, the vocabulary's tokens):
    // a NUL inside one would cut it short there and not in the model's
    // own decoding.
    for (int i = 0; i < m->sp.GetPieceSize(); i++)
        if (m->sp.IdToPiece(i).find('\0') != std::string::npos)
            return qkv_errf(err, errlen,
                            "%s: SentencePiece piece %d holds a NUL byte", name,
                            i);
    return 0;
}

// Out of memory ends the program as qkv_malloc does (exit 2).
[[noreturn]] void oom(const char *what) {
    std::fprintf(stderr, "qkv: out of memory in SentencePiece %s\n", what);
    std::exit(2);
}

} // namespace

extern "C" int qkv_spm_train(qkv_spm **out, const char *const *sentences,
                             size_t n, const char *type, int vocab_size,
                             char *err, size_t errlen) {
    *out = nullptr;
    qkv_spm *m = nullptr;
    try {
        if (std::strcmp(type, "unigram") && std::strcmp(type, "bpe"))
            return qkv_errf(err, errlen,
                            "SentencePiece model type \"%.40s\": want unigram "
                            "or bpe",
                            type);
        // Every setting that changes the model is spelt out here, so a
        // library default changing cannot change qkv's models unseen.
        std::unordered_map<std::string, std::string> args = {
            {"model_type", type},
            {"vocab_size", std::to_string(vocab_size)},
            {"pad_id", "0"},
            {"bos_id", "1"},
            {"eos_id", "2"},
            {"unk_id", "3"},
            {"pad_piece", "<pad>"},
            {"bos_piece", "<bos>"},
            {"eos_piece", "<eos>"},
            {"unk_piece", "<unk>"},
            {"unk_surface", "<unk>"},
            {"character_coverage", "1.0"},
            {"normalization_rule_name", "identity"},
            {"remove_extra_whitespaces", "true"},
            {"add_dummy_prefix", "true"},
            {"byte_fallback", "false"},
            {"hard_vocab_limit", "true"},
            {"input_sentence_size", "0"},
            {"shuffle_input_sentence", "false"},
            {"max_sentence_length", "1048576"},
            {"num_threads", "1"},
            {"minloglevel", "3"},
            // a newline is one piece of its own: a text's lines stay lines
            {"user_defined_symbols", "\n"},
        };
        sentencepiece::SetRandomGeneratorSeed(1);
        array_iterator it(sentences, n);
        m = new qkv_spm;
        auto st =
            sentencepiece::SentencePieceTrainer::Train(args, &it, &m->bytes);
        if (!st.ok()) {
            delete m;
            std::string why = reason_of(st.message());
            int have, need; // "10 vs 36": pieces asked, characters + 4 specials
                            // + the newline
            const char *p = std::strstr(why.c_str(), "required_chars. ");
            if (p && std::sscanf(p + 16, "%d vs %d", &have, &need) == 2)
                return qkv_errf(err, errlen,
                                "SentencePiece: %d pieces cannot hold the %d "
                                "characters of the text, the specials and "
                                "the newline (want at least %d)",
                                have, need - 5, need);
            return fail(err, errlen, "SentencePiece", why);
        }
        if (load(m, "SentencePiece", err, errlen)) {
            delete m;
            return -1;
        }
        *out = m;
        return 0;
    } catch (const std::bad_alloc &) {
        delete m;
        return qkv_errf(err, errlen, "SentencePiece: out of memory training");
    } catch (const std::exception &e) {
        delete m;
        return fail(err, errlen, "SentencePiece", e.what());
    } catch (...) {
        delete m;
        return qkv_errf(err, errlen, "SentencePiece: training failed");
    }
}

extern "C" int qkv_spm_load(qkv_spm **out, const void *bytes, size_t len,
                            const char *name, char *err, size_t errlen) {
    *out = nullptr;
    qkv_spm *m = nullptr;
    try {
        m = new qkv_spm;
        m->bytes.assign(static_cast<const char *>(bytes), len);
        if (load(m, name, err, errlen)) {
            delete m;
            return -1;
        }
        *out = m;
        return 0;
    } catch (const std::bad_alloc &) {
        delete m;
        return qkv_errf(err, errlen, "%s: out of memory loading the model",
                        name);
    } catch (const std::exception &e) {
        delete m;
        return fail(err, errlen, name, e.what());
    } catch (...) {
        delete m;
        return qkv_errf(err, errlen, "%s: not a SentencePiece model", name);
    }
}

extern "C" void qkv_spm_free(qkv_spm *m) {
    delete m;
}

extern "C" const void *qkv_spm_bytes(const qkv_spm *m, size_t *len) {
    *len = m->bytes.size();
    return m->bytes.data();
}

extern "C" int qkv_spm_size(const qkv_spm *m) {
    return m->sp.GetPieceSize();
}

extern "C" const char *qkv_spm_piece(const qkv_spm *m, int id) {
    QKV_CHECK(id >= 0 && id < m->sp.GetPieceSize(),
              "spm_piece: id %d outside the model (size %d)", id,
              m->sp.GetPieceSize());
    return m->sp.IdToPiece(id).c_str();
}

extern "C" int qkv_spm_encode(const qkv_spm *m, const char *s, int32_t *ids,
                              int max) {
    std::vector<int> v;
    try {
        auto st = m->sp.Encode(s, &v);
        QKV_CHECK(st.ok(), "spm_encode: %s", st.ToString().c_str());
    } catch (const std::bad_alloc &) {
        oom("encoding");
    } catch (const std::exception &e) {
        QKV_FATAL("spm_encode: %s", e.what());
    }
    QKV_CHECK(v.size() <= INT32_MAX, "spm_encode: more than %d tokens",
              INT32_MAX);
    for (size_t i = 0; i < v.size() && i < (size_t)(max > 0 ? max : 0); i++)
        ids[i] = v[i];
    return (int)v.size();
}

extern "C" size_t qkv_spm_decode(const qkv_spm *m, const int32_t *ids, int n,
                                 char *out, size_t cap) {
    QKV_CHECK(cap > 0, "spm_decode: no room for the NUL");
    std::string text;
    try {
        std::vector<int> v(ids, ids + (n > 0 ? n : 0));
        for (int id : v)
            QKV_CHECK(id >= 0 && id < m->sp.GetPieceSize(),
                      "spm_decode: id %d outside the model (size %d)", id,
                      m->sp.GetPieceSize());
        auto st = m->sp.Decode(v, &text);
        QKV_CHECK(st.ok(), "spm_decode: %s", st.ToString().c_str());
    } catch (const std::bad_alloc &) {
        oom("decoding");
    } catch (const std::exception &e) {
        QKV_FATAL("spm_decode: %s", e.what());
    }
    size_t k = text.size() < cap ? text.size() : cap - 1;
    std::memcpy(out, text.data(), k);
    out[k] = '\0';
    return text.size();
}
