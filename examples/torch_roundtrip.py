#!/usr/bin/python3
"""A qkv model in PyTorch and back: torch.nn.Transformer with qkv's weights.

  /usr/bin/python3 examples/torch_roundtrip.py MODEL.safetensors \
      [--qkv build/examples/qkv] [--logits build/examples/logits] \
      [--data TEST.tsv] [--work DIR] [--tol 1e-4]

MODEL is a checkpoint written by `qkv train` (or a file `qkv export` wrote).

1. `qkv export` writes its weights (W.safetensors) and config (W.json).
2. The same model is built from torch.nn: an encoder-decoder is
   torch.nn.Transformer (batch_first, norm_first for pre-norm, no final norms
   for post-norm) between embeddings and a generator; a decoder-only model is
   torch.nn.TransformerEncoder with a causal mask. qkv's linears have no
   biases: torch 1.13 has no bias=False for them, so the biases are zeroed
   and frozen. qkv's weights are loaded into it by name (w_q, w_k, w_v become
   in_proj_weight; w1, w2 linear1, linear2; gamma, beta weight, bias).
3. On a random batch with padding, torch's logits must match qkv's
   (examples/logits.c) within --tol, max absolute difference over the
   positions that are not padding.
4. The other way: the torch model takes one SGD step (so its weights are its
   own), saves its state under qkv's names in a safetensors file with no
   metadata, as safetensors' save_file would, plus the config JSON. qkv
   must load it (logits.c, qkv eval, qkv decode with --config), its logits
   must match torch's within --tol, and `qkv decode` must print what torch's
   own greedy decoding gives.

safetensors (the format: an 8-byte little-endian header length, a JSON
header, raw little-endian data) is read and written here by hand, as the
`safetensors` Python package is not in Debian. Prints PASS lines and exits
0, or prints FAIL lines and exits 1.
"""
import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
torch.set_num_threads(1)

PAD, BOS, EOS = 0, 1, 2


# ------------------------------------------------------------ safetensors

def read_safetensors(path):
    """{name: float32 tensor}, {metadata}."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, h in header.items():
        assert h["dtype"] == "F32", f"{path}: {name} is {h['dtype']}"
        a, b = h["data_offsets"]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32)
        out[name] = t.reshape(h["shape"]).clone()
    return out, meta


def write_safetensors(path, tensors, meta=None):
    """What safetensors' save_file writes: sorted names, F32, 8-aligned."""
    header, blobs, off = {}, [], 0
    if meta:
        header["__metadata__"] = meta
    for name in sorted(tensors):
        raw = tensors[name].detach().contiguous().float().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


# ------------------------------------------------------------ the model

def pos_table(L, D):
    """PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(...)
    (Vaswani et al. 2017, sec. 3.5), in double, then float as qkv's."""
    pe = torch.zeros(L, D, dtype=torch.float64)
    pos = torch.arange(L, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(0, D, 2, dtype=torch.float64)
    ang = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), i / D)
    pe[:, 0::2] = torch.sin(ang)
    pe[:, 1::2] = torch.cos(ang)[:, : D // 2]
    return pe.float()


class QkvTorch(nn.Module):
    """qkv's encoder-decoder or decoder-only model out of torch.nn parts."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        D, H, Fd = c["d_model"], c["heads"], c["d_ff"]
        pre = c["norm"] == "pre"
        self.decoder_only = c["kind"] == "decoder"
        if not self.decoder_only:
            self.src_embed = nn.Embedding(c["src_vocab"], D)
        self.tgt_embed = nn.Embedding(c["tgt_vocab"], D)
        if c["pos"] == "learned":
            if not self.decoder_only:
                self.src_pos = nn.Embedding(c["max_len"], D)
            self.tgt_pos = nn.Embedding(c["max_len"], D)
        else:
            self.register_buffer("pe", pos_table(c["max_len"], D), persistent=False)
        common = dict(d_model=D, nhead=H, dim_feedforward=Fd, dropout=0.0,
                      activation=c["act"], layer_norm_eps=c["ln_eps"],
                      batch_first=True, norm_first=pre)
        if self.decoder_only:
            layer = nn.TransformerEncoderLayer(**common)
            self.stack = nn.TransformerEncoder(
                layer, c["n_dec"],
                norm=nn.LayerNorm(D, eps=c["ln_eps"]) if pre else None,
                enable_nested_tensor=False)
        else:
            self.transformer = nn.Transformer(
                num_encoder_layers=c["n_enc"], num_decoder_layers=c["n_dec"],
                **common)
            if not pre:  # post-norm has no final norms (as the paper)
                self.transformer.encoder.norm = None
                self.transformer.decoder.norm = None
        self.generator = nn.Linear(D, c["tgt_vocab"], bias=False)
        if c["tie_output"]:
            self.generator.weight = self.tgt_embed.weight
        for name, p in self.named_parameters():  # qkv's linears have none
            if name.endswith("_bias") or (name.endswith(".bias")
                                          and "norm" not in name):
                with torch.no_grad():
                    p.zero_()
                p.requires_grad_(False)

    def embed(self, table, pos, ids):
        x = table(ids)
        if self.c["scale_emb"]:
            x = x * math.sqrt(self.c["d_model"])
        T = ids.shape[1]
        return x + (pos.weight[:T] if pos is not None else self.pe[:T])

    def forward(self, src, tgt_in):
        learned = self.c["pos"] == "learned"
        T = tgt_in.shape[1]
        causal = torch.triu(torch.full((T, T), float("-inf")), 1)
        tgt_pad = tgt_in == self.c["pad_id"]
        y = self.embed(self.tgt_embed, self.tgt_pos if learned else None,
                       tgt_in)
        if self.decoder_only:
            h = self.stack(y, mask=causal, src_key_padding_mask=tgt_pad)
        else:
            src_pad = src == self.c["pad_id"]
            x = self.embed(self.src_embed, self.src_pos if learned else None,
                           src)
            mem = self.transformer.encoder(x, src_key_padding_mask=src_pad)
            h = self.transformer.decoder(y, mem, tgt_mask=causal,
                                         tgt_key_padding_mask=tgt_pad,
                                         memory_key_padding_mask=src_pad)
        return self.generator(h)


def name_map(c):
    """(qkv name, torch name, part) for every parameter of config c: part k
    of 3 is the k-th third of torch's in_proj_weight (w_q, w_k, w_v)."""
    dec_only, pre = c["kind"] == "decoder", c["norm"] == "pre"
    m = [("tgt_embed.weight", "tgt_embed.weight", None)]
    if not dec_only:
        m.append(("src_embed.weight", "src_embed.weight", None))
    if c["pos"] == "learned":
        m += [(n, n, None) for n in ["tgt_pos.weight"] +
              ([] if dec_only else ["src_pos.weight"])]
    if not c["tie_output"]:
        m.append(("generator.weight", "generator.weight", None))

    def norm(q, t):
        return [(q + ".gamma", t + ".weight", None), (q + ".beta", t + ".bias", None)]

    def layer(q, t, attns, norms):
        out = []
        for qa, ta in attns:
            out += [(f"{q}.{qa}.w_{k}", f"{t}.{ta}.in_proj_weight", i)
                    for i, k in enumerate("qkv")]
            out.append((f"{q}.{qa}.w_o", f"{t}.{ta}.out_proj.weight", None))
        out += [(f"{q}.ffn.w1", f"{t}.linear1.weight", None),
                (f"{q}.ffn.w2", f"{t}.linear2.weight", None)]
        for k in range(1, norms + 1):
            out += norm(f"{q}.norm{k}", f"{t}.norm{k}")
        return out

    if dec_only:
        for i in range(c["n_dec"]):
            m += layer(f"decoder.layers.{i}", f"stack.layers.{i}",
                       [("self_attn", "self_attn")], 2)
        if pre:
            m += norm("decoder.norm", "stack.norm")
        return m
    for i in range(c["n_enc"]):
        m += layer(f"encoder.layers.{i}", f"transformer.encoder.layers.{i}",
                   [("self_attn", "self_attn")], 2)
    for i in range(c["n_dec"]):
        m += layer(f"decoder.layers.{i}", f"transformer.decoder.layers.{i}",
                   [("self_attn", "self_attn"), ("cross_attn", "multihead_attn")], 3)
    if pre and c["n_enc"]:
        m += norm("encoder.norm", "transformer.encoder.norm")
    if pre:
        m += norm("decoder.norm", "transformer.decoder.norm")
    return m


def load_into(model, c, W):
    """model's weights = qkv's tensors W (every one used, none missing)."""
    nm = name_map(c)
    want = {q for q, _, _ in nm}
    missing, extra = want - set(W), set(W) - want
    assert not missing and not extra, f"missing {sorted(missing)}, extra {sorted(extra)}"
    sd = {}
    for q, t, part in nm:
        sd.setdefault(t, [None] * 3)[part or 0] = W[q]
    sd = {t: v[0] if v[1] is None else torch.cat(v) for t, v in sd.items()}
    res = model.load_state_dict(sd, strict=False)
    left = [k for k in res.missing_keys
            if not ((k.endswith("_bias") or k.endswith(".bias")) and "norm" not in k)
            and not (c["tie_output"] and k == "generator.weight")]
    assert not left and not res.unexpected_keys, (left, res.unexpected_keys)


def torch_to_qkv(c, model):
    """qkv's named tensors from the torch model (its biases still 0)."""
    sd = model.state_dict()
    for n, v in sd.items():
        if (n.endswith("_bias") or n.endswith(".bias")) and "norm" not in n:
            assert float(v.abs().max()) == 0.0, f"bias {n} is not zero"
    return {q: (sd[t] if part is None else sd[t].chunk(3)[part]).detach().clone()
            for q, t, part in name_map(c)}


# ------------------------------------------------------------ batches

def make_batch(c, gen, B=4):
    """Random ids with padding: row r is shorter by r tokens."""
    L = min(c["max_len"], 9)
    lo = 4  # ids below are specials (pad, bos, eos, unk)
    if c["kind"] == "decoder":
        x = torch.randint(lo, c["tgt_vocab"], (B, L), generator=gen)
        x[:, 0] = BOS
        for r in range(B):
            x[r, L - r:] = PAD
        return None, x
    S = L
    src = torch.randint(lo, c["src_vocab"], (B, S), generator=gen)
    tgt = torch.randint(lo, c["tgt_vocab"], (B, L), generator=gen)
    tgt[:, 0] = BOS
    for r in range(B):
        src[r, S - (r % 3):] = PAD
        tgt[r, L - r:] = PAD
    return src, tgt


def qkv_logits(args, model_path, config, src, tgt, work):
    bpath, opath = os.path.join(work, "batch.safetensors"), os.path.join(work, "logits.safetensors")
    tensors = {"tgt_in": tgt.float()}
    if src is not None:
        tensors["src"] = src.float()
    write_safetensors(bpath, tensors)
    cmd = [args.logits, model_path] + ([config] if config else []) + [bpath, opath]
    subprocess.run(cmd, check=True)
    return read_safetensors(opath)[0]["logits"]


def max_diff(a, b, tgt, pad):
    keep = (tgt != pad).unsqueeze(-1)
    return float(((a - b).abs() * keep).max())


# ------------------------------------------------------------ decoding

def greedy(model, c, ids, eos, max_out):
    """Torch's greedy decoding, as qkv decode does it (beam 1 / temp 0).
    With gradients on, so torch takes the same path as for the logits (its
    inference fast path drops padded positions)."""
    dec = c["kind"] == "decoder"
    src = None if dec else torch.tensor([ids])
    seq = ids + [BOS] if dec else [BOS]
    out = []
    for _ in range(max_out):
        y = int(model(src, torch.tensor([seq]))[0, -1].argmax())
        out.append(y)
        seq.append(y)
        if y == eos:
            break
    return out


def upto(out, stop):
    """out up to its first token in stop."""
    for k, y in enumerate(out):
        if y in stop:
            return out[:k]
    return out


def decode_case(c, data):
    """An input for qkv decode, its ids, eos, the output's length, and the
    text qkv decode prints for output ids (cli_detokenize, print_output)."""
    if "tok" in data:
        toks = data["vocab.src"][4:9]
        sep = " " if data["tok"] == "word" else ""
        text, ids, eos = sep.join(toks), list(range(4, 4 + len(toks))), EOS
        tv = data["vocab.tgt"]
        show = lambda out: sep.join(tv[i] for i in upto(out, {EOS})
                                    if i not in (PAD, BOS))
        L = 2 * len(ids) + 8
    else:
        use_eos = data["min-len"] != data["max-len"]
        first = 3 if use_eos else 2  # ids below are specials
        ids = [first + (i * 7) % (data["vocab"] - first)
               for i in range(data["min-len"])]
        text, eos = " ".join(map(str, ids)), EOS if use_eos else -1
        show = lambda out: " ".join(map(str, upto(out, {PAD, eos})))
        L = 2 * len(ids) + 8 if use_eos else len(ids)
    room = c["max_len"] - (len(ids) + 1) if c["kind"] == "decoder" else c["max_len"]
    return text, ids, eos, min(L, room), show


# ------------------------------------------------------------ main

failed = 0


def check(ok, name, msg):
    global failed
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else ": " + msg))
    failed += not ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--qkv", default="build/examples/qkv")
    ap.add_argument("--logits", default="build/examples/logits")
    ap.add_argument("--data", default="", help="test TSV, for qkv eval of a corpus model")
    ap.add_argument("--work", default="")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--name", default="torch_roundtrip")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="qkv-torch-")
    name = args.name

    # 1. qkv's weights and config
    W_path, J_path = os.path.join(work, "w.safetensors"), os.path.join(work, "w.json")
    subprocess.run([args.qkv, "export", "--ckpt", args.model, "-o", W_path,
                    "--json", J_path], check=True, stdout=subprocess.DEVNULL)
    W, meta = read_safetensors(W_path)
    conf = json.load(open(J_path))
    c, data = conf["model"], conf["data"]
    assert meta["format"] == "qkv-weights-1" and json.loads(meta["model"]) == c

    # 2. the torch model with qkv's weights
    model = QkvTorch(c)
    model.eval()
    load_into(model, c, W)

    # 3. logits of a batch, both sides
    gen = torch.Generator().manual_seed(1)
    src, tgt = make_batch(c, gen)
    ours = model(src, tgt)
    theirs = qkv_logits(args, W_path, None, src, tgt, work)
    d = max_diff(ours, theirs, tgt, c["pad_id"])
    check(d <= args.tol, f"{name}/qkv_to_torch",
          f"max |logits difference| {d:.3g} > {args.tol:g}")
    print(f"  qkv -> torch: max |logit difference| {d:.2e} over "
          f"{int((tgt != c['pad_id']).sum())} positions (bound {args.tol:g})")
    ck = qkv_logits(args, args.model, None, src, tgt, work)
    check(torch.equal(ck, theirs), f"{name}/export_same_logits",
          "the export's logits differ from the checkpoint's")

    # 4. one SGD step in torch, saved under qkv's names without metadata
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    y = torch.roll(tgt, -1, 1)
    loss = F.cross_entropy(model(src, tgt).reshape(-1, c["tgt_vocab"]),
                           y.reshape(-1), ignore_index=c["pad_id"])
    loss.backward()
    opt.step()
    opt.zero_grad()
    T_path = os.path.join(work, "torch.safetensors")
    write_safetensors(T_path, torch_to_qkv(c, model))
    ours = model(src, tgt)
    theirs = qkv_logits(args, T_path, J_path, src, tgt, work)
    d = max_diff(ours, theirs, tgt, c["pad_id"])
    check(d <= args.tol, f"{name}/torch_to_qkv",
          f"max |logits difference| {d:.3g} > {args.tol:g}")
    print(f"  torch -> qkv: max |logit difference| {d:.2e} (bound {args.tol:g})")

    # qkv eval and decode read the torch file with --config
    ev = [args.qkv, "eval", "--ckpt", T_path, "--config", J_path]
    ev += ["--data", args.data] if "tok" in data else ["--size", "20"]
    if "tok" not in data or args.data:
        r = subprocess.run(ev, capture_output=True, text=True)
        check(r.returncode == 0 and "loss" in r.stdout, f"{name}/eval_torch_file",
              f"exit {r.returncode}: {r.stdout}{r.stderr}")
    text, ids, eos, L, show = decode_case(c, data)
    r = subprocess.run([args.qkv, "decode", "--ckpt", T_path, "--config", J_path,
                        text], capture_output=True, text=True)
    want = show(greedy(model, c, ids, eos, L))
    check(r.returncode == 0 and r.stdout == want + "\n", f"{name}/decode_torch_file",
          f"qkv decode printed {r.stdout!r} (exit {r.returncode}, {r.stderr.strip()}), "
          f"torch's greedy decoding {want!r}")
    print(f"  decode {text!r}: qkv and torch both {want!r}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
