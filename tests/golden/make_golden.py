#!/usr/bin/python3
"""Golden values for qkv's encoder-decoder, computed with PyTorch.

Builds the same bias-free encoder-decoder as nn/model.c (same parameter
names, same formulas), written functionally in torch so every step is
visible, runs one batch with real padding and writes to a safetensors file:

  param.<name>        the weights qkv loads (random; gamma/beta perturbed)
  batch.<field>       token ids and pad masks (as float32)
  expect.logits       (B, T, V) logits
  expect.loss         cross-entropy (ignore pad, label smoothing 0.1)
  grad.<name>         d loss / d param after one backward
  expect.adam_losses  the loss before each of 10 Adam steps on this batch

and beside it NAME_bf16.safetensors, for --precision bf16:

  expect.logits_autocast  the same forward under torch.autocast("cpu",
                          torch.bfloat16)
  grad64.<name>           d loss / d param with the parameters and the whole
                          forward and backward in float64 (same batch, same
                          loss), rounded to float32 when stored
  fd.param_index          FD_PER_TENSOR coordinates of every parameter tensor:
  fd.offset               the index into the sorted parameter names (the
  fd.value                metadata's "fd_params", a JSON list), the flat
                          offset, and the float64 central difference
                          (L(p+h) - L(p-h)) / 2h there (metadata "fd_h")

The "__metadata__" holds the model config, read by tests/test_golden.c.
Usage (Debian's python3-torch): /usr/bin/python3 make_golden.py OUT_DIR
Run by `make golden`; the files it writes are committed so `make test` needs
no PyTorch.
"""
import json
import math
import struct
import sys

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

PAD, BOS = 0, 1


def pos_table(L, D):
    """PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(...)."""
    pe = torch.zeros(L, D, dtype=torch.float64)
    for p in range(L):
        for i in range(0, D, 2):
            a = p / math.pow(10000.0, i / D)
            pe[p, i] = math.sin(a)
            if i + 1 < D:
                pe[p, i + 1] = math.cos(a)
    return pe.float()


def make_params(cfg, gen):
    D, F_, L = cfg["d_model"], cfg["d_ff"], cfg["max_len"]
    shapes = {"src_embed.weight": (cfg["src_vocab"], D)}
    if cfg["pos"] == "learned":
        shapes["src_pos.weight"] = (L, D)
    shapes["tgt_embed.weight"] = (cfg["tgt_vocab"], D)
    if cfg["pos"] == "learned":
        shapes["tgt_pos.weight"] = (L, D)

    def attn(prefix):
        for w in ("w_q", "w_k", "w_v", "w_o"):
            shapes[f"{prefix}.{w}"] = (D, D)

    def ffn(prefix):
        shapes[f"{prefix}.w1"] = (F_, D)
        shapes[f"{prefix}.w2"] = (D, F_)

    def norm(prefix):
        shapes[f"{prefix}.gamma"] = (D,)
        shapes[f"{prefix}.beta"] = (D,)

    for i in range(cfg["n_enc"]):
        p = f"encoder.layers.{i}"
        attn(p + ".self_attn"); ffn(p + ".ffn"); norm(p + ".norm1"); norm(p + ".norm2")
    if cfg["norm"] == "pre":
        norm("encoder.norm")
    for i in range(cfg["n_dec"]):
        p = f"decoder.layers.{i}"
        attn(p + ".self_attn"); attn(p + ".cross_attn"); ffn(p + ".ffn")
        norm(p + ".norm1"); norm(p + ".norm2"); norm(p + ".norm3")
    if cfg["norm"] == "pre":
        norm("decoder.norm")
    if not cfg["tie_output"]:
        shapes["generator.weight"] = (cfg["tgt_vocab"], D)

    params = {}
    for name, shape in shapes.items():
        t = torch.empty(shape)
        if len(shape) >= 2:
            _xavier(t, gen)
        elif name.endswith(".gamma"):
            t = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:
            t = 0.1 * torch.randn(shape, generator=gen)
        params[name] = t.requires_grad_(True)
    return params


def _xavier(t, gen):
    """Glorot uniform, drawn from gen (torch 1.13's init takes no generator)."""
    a = math.sqrt(6.0 / (t.shape[0] + t.shape[1]))
    with torch.no_grad():
        t.copy_((torch.rand(t.shape, generator=gen) * 2 - 1) * a)


def layernorm(P, name, x, eps):
    return F.layer_norm(x, x.shape[-1:], P[name + ".gamma"], P[name + ".beta"], eps)


def mha(P, name, x, mem, heads, key_pad, causal):
    B, T, D = x.shape
    S, K = mem.shape[1], D // heads
    q = (x @ P[name + ".w_q"].T).view(B, T, heads, K).transpose(1, 2)
    k = (mem @ P[name + ".w_k"].T).view(B, S, heads, K).transpose(1, 2)
    v = (mem @ P[name + ".w_v"].T).view(B, S, heads, K).transpose(1, 2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(K)           # (B, H, T, S)
    hide = torch.zeros(B, 1, T, S, dtype=torch.bool)
    if key_pad is not None:
        hide = hide | key_pad.view(B, 1, 1, S)
    if causal:
        i = torch.arange(T).view(T, 1)
        j = torch.arange(S).view(1, S)
        hide = hide | (j > i + (S - T)).view(1, 1, T, S)
    a = torch.softmax(scores.masked_fill(hide, float("-inf")), dim=-1)
    y = (a @ v).transpose(1, 2).reshape(B, T, D)
    return y @ P[name + ".w_o"].T


def ffn(P, name, x, act):
    h = x @ P[name + ".w1"].T
    h = F.gelu(h) if act == "gelu" else F.relu(h)
    return h @ P[name + ".w2"].T


def sublayer(cfg, P, norm, x, f):
    """post-norm: LN(x + f(x)); pre-norm: x + f(LN(x)) (dropout is 0 here)."""
    if cfg["norm"] == "post":
        return layernorm(P, norm, x + f(x), cfg["ln_eps"])
    return x + f(layernorm(P, norm, x, cfg["ln_eps"]))


def embed(cfg, P, table, pos, ids):
    x = P[table][ids]
    if cfg["scale_emb"]:
        x = x * math.sqrt(cfg["d_model"])
    T = ids.shape[1]
    p = P[pos][:T] if cfg["pos"] == "learned" else pos_table(T, cfg["d_model"])
    return x + p


def forward(cfg, P, b):
    H = cfg["heads"]
    x = embed(cfg, P, "src_embed.weight", "src_pos.weight", b["src"])
    for i in range(cfg["n_enc"]):
        p = f"encoder.layers.{i}"
        x = sublayer(cfg, P, p + ".norm1", x,
                     lambda h: mha(P, p + ".self_attn", h, h, H, b["src_pad"], False))
        x = sublayer(cfg, P, p + ".norm2", x,
                     lambda h: ffn(P, p + ".ffn", h, cfg["act"]))
    if cfg["norm"] == "pre":
        x = layernorm(P, "encoder.norm", x, cfg["ln_eps"])
    mem = x
    y = embed(cfg, P, "tgt_embed.weight", "tgt_pos.weight", b["tgt_in"])
    for i in range(cfg["n_dec"]):
        p = f"decoder.layers.{i}"
        y = sublayer(cfg, P, p + ".norm1", y,
                     lambda h: mha(P, p + ".self_attn", h, h, H, b["tgt_pad"], True))
        y = sublayer(cfg, P, p + ".norm2", y,
                     lambda h: mha(P, p + ".cross_attn", h, mem, H, b["src_pad"], False))
        y = sublayer(cfg, P, p + ".norm3", y,
                     lambda h: ffn(P, p + ".ffn", h, cfg["act"]))
    if cfg["norm"] == "pre":
        y = layernorm(P, "decoder.norm", y, cfg["ln_eps"])
    gen = P["tgt_embed.weight"] if cfg["tie_output"] else P["generator.weight"]
    return y @ gen.T


def loss_of(cfg, logits, b):
    V = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, V), b["tgt_out"].reshape(-1),
                           ignore_index=PAD, label_smoothing=cfg["smoothing"])


def make_batch(cfg, gen):
    """Random ids with real padding: every row has its own length."""
    B, S, T = cfg["batch"], cfg["src_len"], cfg["tgt_len"]
    src = torch.randint(3, cfg["src_vocab"], (B, S), generator=gen)
    tgt = torch.randint(3, cfg["tgt_vocab"], (B, T), generator=gen)
    src_pad = torch.zeros(B, S, dtype=torch.bool)
    tgt_pad = torch.zeros(B, T, dtype=torch.bool)
    for r in range(B):
        ls, lt = S - (r % 3), T - 2 * (r % 2)
        src_pad[r, ls:] = True
        tgt_pad[r, lt:] = True
    src = src.masked_fill(src_pad, PAD)
    tgt_out = tgt.masked_fill(tgt_pad, PAD)
    tgt_in = torch.cat([torch.full((B, 1), BOS), tgt_out[:, :-1]], 1)
    tgt_in = tgt_in.masked_fill(tgt_pad, PAD)
    return {"src": src, "src_pad": src_pad, "tgt_in": tgt_in,
            "tgt_out": tgt_out, "tgt_pad": tgt_pad}


# Central differences in float64. The loss is about 3 and its float64
# rounding error about 1e-15, so a difference's rounding error is about
# 1e-15 / h, its truncation error h^2/6 |L'''|, and a step must not straddle
# a ReLU's kink. Measured worst |fd - grad64| / max |grad64 of the tensor|
# (post_sin, pre_learned): h 1e-3: 2.5e-3 (a kink), 4.9e-7; 1e-4: 7.1e-9,
# 4.8e-9; 1e-5: 1.4e-9, 2.6e-9; 1e-6: 1.3e-8, 3.0e-8; 1e-7: 2.2e-7, 2.0e-7
# (rounding). h = 1e-5 is the best of these; the script asserts FD_TOL.
FD_H = 1e-5
FD_PER_TENSOR = 2
FD_TOL = 1e-7  # |fd - grad64| <= FD_TOL * max |grad64 of the tensor|


def grads_fp64(cfg, P, b):
    """float64 parameters, forward, loss and backward: the reference."""
    P64 = {k: v.detach().double().requires_grad_(True) for k, v in P.items()}
    loss = loss_of(cfg, forward(cfg, P64, b), b)
    loss.backward()
    return {k: v.detach() for k, v in P64.items()}, \
           {k: v.grad.detach() for k, v in P64.items()}


def finite_differences(cfg, P64, G64, b, seed):
    """FD_PER_TENSOR distinct coordinates of every tensor (sorted names), drawn
    by a seeded generator among those whose float64 gradient is not zero
    (unused embedding rows and positions have none: nothing to check)."""
    names = sorted(P64)
    gen = torch.Generator().manual_seed(seed)
    P = {k: v.clone() for k, v in P64.items()}

    def L():
        with torch.no_grad():
            return loss_of(cfg, forward(cfg, P, b), b).item()

    idx, offs, vals, worst = [], [], [], (0.0, "")
    for i, n in enumerate(names):
        g = G64[n].flatten()
        nz = g.nonzero().flatten()
        pick = nz[torch.randperm(len(nz), generator=gen)[:FD_PER_TENSOR]]
        flat = P[n].view(-1)
        scale = g.abs().max().item()
        for off in sorted(pick.tolist()):
            assert off < 2 ** 24  # exact as float32
            x = flat[off].item()
            up, dn = x + FD_H, x - FD_H
            flat[off] = up
            lp = L()
            flat[off] = dn
            lm = L()
            flat[off] = x
            fd = (lp - lm) / (up - dn)  # the steps as float64 made them
            err = abs(fd - g[off].item()) / scale
            assert err <= FD_TOL, f"{n}[{off}]: fd {fd} vs grad {g[off]}"
            if err >= worst[0]:
                worst = (err, f"{n}[{off}]")
            idx.append(i), offs.append(off), vals.append(fd)
    return names, torch.tensor(idx, dtype=torch.float64), \
        torch.tensor(offs, dtype=torch.float64), \
        torch.tensor(vals, dtype=torch.float64), worst


def write_safetensors(path, tensors, meta):
    """safetensors: u64 LE header length, JSON header, F32 LE data."""
    header, blobs, off = {"__metadata__": meta}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().float().contiguous()
        raw = t.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for raw in blobs:
            f.write(raw)


def golden(name, cfg, out_dir):
    gen = torch.Generator().manual_seed(cfg["seed"])
    P = make_params(cfg, gen)
    b = make_batch(cfg, gen)
    logits = forward(cfg, P, b)
    loss = loss_of(cfg, logits, b)
    loss.backward()
    tensors = {f"param.{k}": v for k, v in P.items()}
    tensors.update({f"grad.{k}": v.grad for k, v in P.items()})
    tensors.update({f"batch.{k}": v.float() for k, v in b.items()})
    tensors["expect.logits"] = logits
    tensors["expect.loss"] = loss.reshape(())
    snapshot = {k: v.detach().clone() for k, v in tensors.items()}
    # The same forward under CPU autocast (bf16 matrix products, fp32 sums),
    # for qkv's --precision bf16; its own file, so the fp32 ones stay as
    # they were.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = forward(cfg, P, b).float()
    # The float64 gradient and its finite differences: the reference that
    # qkv's bf16 (and fp32) gradients are checked against.
    P64, G64 = grads_fp64(cfg, P, b)
    names, fd_i, fd_o, fd_v, worst = finite_differences(cfg, P64, G64, b,
                                                        cfg["seed"] + 100)
    bf16 = {"expect.logits_autocast": autocast,
            "fd.param_index": fd_i, "fd.offset": fd_o, "fd.value": fd_v}
    bf16.update({f"grad64.{k}": v for k, v in G64.items()})
    write_safetensors(f"{out_dir}/{name}_bf16.safetensors", bf16,
                      {"torch": torch.__version__,
                       "what": "logits of " + name + " under torch.autocast"
                               "('cpu', torch.bfloat16); float64 gradients "
                               "and central differences",
                       "fd_params": json.dumps(names), "fd_h": str(FD_H)})
    print(f"{name}: {len(fd_v)} float64 central differences (h {FD_H:g}) "
          f"agree with the float64 gradient to {worst[0]:.1e} of the "
          f"tensor's largest (worst {worst[1]})")

    opt = torch.optim.Adam(P.values(), lr=cfg["adam_lr"], betas=(0.9, 0.98),
                           eps=1e-9, foreach=False)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        l = loss_of(cfg, forward(cfg, P, b), b)
        losses.append(l.item())
        l.backward()
        opt.step()
    snapshot["expect.adam_losses"] = torch.tensor(losses)
    meta = {k: str(v) for k, v in cfg.items()}
    meta["torch"] = torch.__version__
    path = f"{out_dir}/{name}.safetensors"
    write_safetensors(path, snapshot, meta)
    print(f"{path}: loss {loss.item():.6f}, adam losses {losses[0]:.5f} .. "
          f"{losses[-1]:.5f}")


BASE = dict(src_vocab=11, tgt_vocab=13, d_model=16, heads=4, d_ff=32, n_enc=2,
            n_dec=2, max_len=16, ln_eps=1e-5, scale_emb=1, tie_output=0,
            act="relu", smoothing=0.1, batch=3, src_len=7, tgt_len=6,
            adam_lr=3e-3)

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/golden"
    golden("post_sin", dict(BASE, norm="post", pos="sin", seed=1), out)
    golden("pre_learned", dict(BASE, norm="pre", pos="learned", act="gelu",
                               tie_output=1, seed=2), out)
