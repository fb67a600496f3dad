"""bench_torch.py - the PyTorch peer of bench/bench_train.c.

The same encoder-decoder as qkv's (bias-free linears, post-norm, sinusoidal
positions, ReLU FFN, no dropout, Adam with the paper's betas), written the
way a PyTorch user would (nn.Module, nn.Linear(bias=False), nn.LayerNorm,
torch.optim.Adam), trained on the copy task at one of the three bench
configs. Prints one line of key=value pairs, as bench_train does:

    /usr/bin/python3 bench/bench_torch.py tiny --threads 2
    ms_per_step=3.21 tokens_per_s=... rss_mb=...

Timing: 5 warm-up steps, then --reps runs of --steps steps each; the figure
is the median run's time per step.
"""

import argparse
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {  # d_model, N, h, d_ff, seq len, batch, vocab
    "tiny": (64, 2, 4, 256, 16, 32, 16),
    "small": (128, 2, 4, 512, 32, 32, 64),
    "base": (256, 4, 8, 1024, 64, 32, 1000),
}


def pos_table(L, D):
    pos = torch.arange(L, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(0, D, 2, dtype=torch.float64)
    a = pos / torch.pow(10000.0, i / D)
    pe = torch.zeros(L, D, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(a)
    pe[:, 1::2] = torch.cos(a)
    return pe.float()


class MHA(nn.Module):
    def __init__(self, D, H):
        super().__init__()
        self.H = H
        self.q = nn.Linear(D, D, bias=False)
        self.k = nn.Linear(D, D, bias=False)
        self.v = nn.Linear(D, D, bias=False)
        self.o = nn.Linear(D, D, bias=False)

    def forward(self, x, mem, mask):
        B, T, D = x.shape
        S, H = mem.shape[1], self.H
        K = D // H
        q = self.q(x).view(B, T, H, K).transpose(1, 2)
        k = self.k(mem).view(B, S, H, K).transpose(1, 2)
        v = self.v(mem).view(B, S, H, K).transpose(1, 2)
        s = q @ k.transpose(-2, -1) / math.sqrt(K)
        if mask is not None:
            s = s.masked_fill(mask, float("-inf"))
        y = torch.softmax(s, dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(B, T, D))


class FFN(nn.Module):
    def __init__(self, D, Fd):
        super().__init__()
        self.w1 = nn.Linear(D, Fd, bias=False)
        self.w2 = nn.Linear(Fd, D, bias=False)

    def forward(self, x):
        return self.w2(F.relu(self.w1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, D, H, Fd):
        super().__init__()
        self.attn, self.ffn = MHA(D, H), FFN(D, Fd)
        self.n1, self.n2 = nn.LayerNorm(D), nn.LayerNorm(D)

    def forward(self, x):
        x = self.n1(x + self.attn(x, x, None))
        return self.n2(x + self.ffn(x))


class DecoderLayer(nn.Module):
    def __init__(self, D, H, Fd):
        super().__init__()
        self.self_attn, self.cross, self.ffn = MHA(D, H), MHA(D, H), FFN(D, Fd)
        self.n1, self.n2, self.n3 = nn.LayerNorm(D), nn.LayerNorm(D), nn.LayerNorm(D)

    def forward(self, y, mem, causal):
        y = self.n1(y + self.self_attn(y, y, causal))
        y = self.n2(y + self.cross(y, mem, None))
        return self.n3(y + self.ffn(y))


class Transformer(nn.Module):
    def __init__(self, V, D, N, H, Fd, L):
        super().__init__()
        self.src_embed, self.tgt_embed = nn.Embedding(V, D), nn.Embedding(V, D)
        self.enc = nn.ModuleList(EncoderLayer(D, H, Fd) for _ in range(N))
        self.dec = nn.ModuleList(DecoderLayer(D, H, Fd) for _ in range(N))
        self.gen = nn.Linear(D, V, bias=False)
        self.register_buffer("pe", pos_table(L, D))
        self.scale = math.sqrt(D)
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal", causal)

    def forward(self, src, tgt):
        S, T = src.shape[1], tgt.shape[1]
        x = self.src_embed(src) * self.scale + self.pe[:S]
        for layer in self.enc:
            x = layer(x)
        y = self.tgt_embed(tgt) * self.scale + self.pe[:T]
        for layer in self.dec:
            y = layer(y, x, self.causal[:T, :T])
        return self.gen(y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config", choices=CONFIGS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: torch.autocast('cpu', torch.bfloat16) around "
                         "the forward and the loss, as its docs advise")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(42)
    D, N, H, Fd, L, B, V = CONFIGS[a.config]
    model = Transformer(V, D, N, H, Fd, L)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
    g = torch.Generator().manual_seed(1)

    def step():
        x = torch.randint(3, V, (B, L), generator=g)   # copy: y = x
        tgt_in = torch.cat([torch.ones(B, 1, dtype=torch.long), x[:, :-1]], 1)
        with torch.autocast("cpu", dtype=torch.bfloat16,
                            enabled=a.precision == "bf16"):
            logits = model(x, tgt_in)
            loss = F.cross_entropy(logits.reshape(-1, V), x.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    times = []
    for _ in range(a.reps):
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        times.append((time.perf_counter() - t0) / a.steps)
    ms = 1e3 * statistics.median(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"ms_per_step={ms:.3f} tokens_per_s={2 * B * L / (ms / 1e3):.0f} "
          f"rss_mb={rss:.1f} threads={a.threads}")


if __name__ == "__main__":
    main()
