#!/usr/bin/env python3
"""dragon_torch.py - the project's own PyTorch implementation of the Dragon / BDH language model,
written from ../shared/docs/MODEL.md sections 1-7; the benchmark peer for dragond.

What it is: the model of MODEL.md section 3 (shared weights across layers, one shared LayerNorm,
ReLU low-rank encoder, strictly causal dense-score linear attention without softmax, x*y gating,
decoder, alibi / rope / pope positions), the cached recurrent decode of section 4 (state rho
[L,S,H,N,D] over S sessions, read before write), AdamW training on random windows of a token file,
and a quality run (one epoch + validation loss). It reads our JSON model configs
(config/models/*.json).
What it is not: part of dragond, a reference for checkpoints (no file formats), or a copy of
pathwaycom/bdh or burn_dragon code. Timing mode, not a library: one process, one model.
Thread affinity: single Python thread; intra-op threads set with --threads (CPU) before any work.

Runs on Debian's python3-torch 1.13 (CPU) and on PyTorch 2.x (CUDA); 2.x-only features
(torch.compile, fused AdamW) are guarded. Subcommands: train, decode, eval-epoch, selftest.
Every subcommand prints one JSON line on stdout with --json (train/decode/eval-epoch always end
with that line; human-readable notes go to stderr).
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time


def _early_threads():
    """OpenBLAS (pthread build) reads OPENBLAS_NUM_THREADS at load time: set it before torch."""
    n = None
    argv = sys.argv
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            n = argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
    if n is not None:
        os.environ["OPENBLAS_NUM_THREADS"] = str(n)
        os.environ["OMP_NUM_THREADS"] = str(n)


if __name__ == "__main__":
    _early_threads()

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

TORCH_MAJOR = int(torch.__version__.split(".")[0])
HAS_COMPILE = TORCH_MAJOR >= 2 and hasattr(torch, "compile")


def note(msg):
    print("[dragon_torch] " + msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------

MODEL_DEFAULTS = {
    "n_layer": 4, "n_embd": 256, "n_head": 4, "mlp_internal_dim_multiplier": 4, "dropout": 0.1,
    "positional": "alibi", "rope_theta": 65536.0, "norm": "layer_norm_affine",
    "relu_threshold": 0.0, "init": "burn_dragon", "tie_embeddings": False,
    "alibi_slopes": None, "norm_eps": 1e-5, "init_std": 0.02,
}
TRAIN_DEFAULTS = {
    "batch_size": 24, "block_size": 512, "lr": 1e-3, "min_lr": 5e-5, "warmup_steps": 0,
    "lr_schedule": "cosine", "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.999, "eps": 1e-5,
    "seed": 1337, "tokenizer": "char", "train_frac": 0.9,
}


def load_config(path):
    with open(path, "r", encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict) or "model" not in raw:
        raise SystemExit("config %s: expected an object with a \"model\" member" % path)
    m = dict(MODEL_DEFAULTS)
    m.update(raw.get("model") or {})
    t = dict(TRAIN_DEFAULTS)
    t.update(raw.get("training") or {})
    D, H, mult = int(m["n_embd"]), int(m["n_head"]), int(m["mlp_internal_dim_multiplier"])
    if (mult * D) % H != 0:
        raise SystemExit("config %s: mult*n_embd must be divisible by n_head" % path)
    if m["positional"] not in ("alibi", "rope", "pope"):
        raise SystemExit("config %s: positional must be alibi|rope|pope" % path)
    if m["norm"] not in ("layer_norm_affine", "layer_norm"):
        raise SystemExit("config %s: norm must be layer_norm_affine|layer_norm" % path)
    if m["init"] not in ("burn_dragon", "normal_0.02"):
        raise SystemExit("config %s: init must be burn_dragon|normal_0.02" % path)
    if t["tokenizer"] not in ("char", "byte"):
        raise SystemExit("config %s: tokenizer must be char|byte" % path)
    return {"model": m, "training": t, "path": path}


# ----------------------------------------------------------------------------------------------
# tokenizers and data
# ----------------------------------------------------------------------------------------------

class CharTokenizer:
    """0 PAD, 1 BOS, 2 EOS, 3 UNK, then characters in order of first appearance (MODEL.md 7.1)."""

    def __init__(self, text):
        self.chars = []
        seen = set()
        for ch in text:
            if ch not in seen:
                seen.add(ch)
                self.chars.append(ch)
        self.stoi = {c: i + 4 for i, c in enumerate(self.chars)}
        self.vocab_size = 4 + len(self.chars)

    def encode(self, text):
        get = self.stoi.get
        return [get(c, 3) for c in text]


class ByteTokenizer:
    """ids 0..255 = bytes; BOS 256, EOS 257, PAD 258 (V = 259, as engine/tokenizer.h); text is
    encoded without specials."""

    vocab_size = 259

    def encode_bytes(self, data):
        return list(data)


def load_tokens(cfg, data_path):
    """Returns (tokens LongTensor [n], vocab_size); synthetic random tokens if data_path is None."""
    tok = cfg["training"]["tokenizer"]
    if data_path is None:
        V = 259 if tok == "byte" else 69
        g = torch.Generator().manual_seed(0)
        note("no --data: using 1.2M synthetic random tokens (speed only), V=%d" % V)
        return torch.randint(0, V, (1_200_000,), generator=g), V
    with open(data_path, "rb") as f:
        raw = f.read()
    if tok == "byte":
        ids = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.long)
        return ids, ByteTokenizer.vocab_size
    text = raw.decode("utf-8")
    t = CharTokenizer(text)
    return torch.tensor(t.encode(text), dtype=torch.long), t.vocab_size


def read_offsets(path, batch):
    """Offsets file: one line per optimizer step, `batch` whitespace-separated start offsets into
    the train split (each window = tokens[o : o+T+1]). Blank lines and '#' lines are skipped."""
    rows = []
    with open(path, "r", encoding="ascii") as f:
        for ln, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            vals = [int(x) for x in s.split()]
            if len(vals) != batch:
                raise SystemExit("offsets %s line %d: %d offsets, expected batch %d"
                                 % (path, ln, len(vals), batch))
            rows.append(vals)
    return rows


class Batcher:
    """Random-window batches (MODEL.md 7.3) or fixed offsets from a file."""

    def __init__(self, tokens, batch, block, seed, offsets=None):
        self.tokens = tokens
        self.B, self.T = batch, block
        self.max_start = tokens.numel() - block - 1
        if self.max_start < 0:
            raise SystemExit("train split (%d tokens) shorter than block+1" % tokens.numel())
        self.gen = torch.Generator().manual_seed(seed)
        self.offsets = offsets
        self.step = 0
        self.ar = torch.arange(block + 1)

    def next(self):
        if self.offsets is not None:
            if self.step >= len(self.offsets):
                raise SystemExit("offsets file has only %d steps" % len(self.offsets))
            starts = torch.tensor(self.offsets[self.step], dtype=torch.long)
            if int(starts.min()) < 0 or int(starts.max()) > self.max_start:
                raise SystemExit("offsets step %d out of range [0, %d]"
                                 % (self.step, self.max_start))
        else:
            starts = torch.randint(0, self.max_start + 1, (self.B,), generator=self.gen)
        self.step += 1
        win = self.tokens[starts[:, None] + self.ar[None, :]]
        return win[:, :-1].contiguous(), win[:, 1:].contiguous()


# ----------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------

def _neuron_gains(shape, gen):
    """HeavyTailedLogNormal gains (MODEL.md 2.2): min(exp(N(0, .75^2)), 4), normalised to RMS 1."""
    z = torch.randn(shape, generator=gen) * 0.75
    g = torch.clamp(torch.exp(z), max=4.0)
    return g / torch.sqrt((g * g).mean())


class Dragon(nn.Module):
    def __init__(self, mcfg, vocab_size, seed=1337):
        super().__init__()
        self.L = int(mcfg["n_layer"])
        self.D = int(mcfg["n_embd"])
        self.H = int(mcfg["n_head"])
        self.Ntot = int(mcfg["mlp_internal_dim_multiplier"]) * self.D
        self.N = self.Ntot // self.H
        self.V = int(vocab_size)
        self.p_drop = float(mcfg["dropout"])
        self.positional = mcfg["positional"]
        self.theta = float(mcfg["rope_theta"])
        self.thr = float(mcfg["relu_threshold"])
        self.affine = mcfg["norm"] == "layer_norm_affine"
        self.eps = float(mcfg.get("norm_eps", 1e-5))
        self.tie = bool(mcfg["tie_embeddings"])
        if self.positional in ("rope",) and self.N % 2 != 0:
            raise SystemExit("rope needs an even per-head neuron count")
        L, D, H, N, V = self.L, self.D, self.H, self.N, self.V

        g = torch.Generator().manual_seed(int(seed))
        std = float(mcfg.get("init_std", 0.02))
        self.embed = nn.Parameter(torch.randn(V, D, generator=g) * std)            # [V,D]
        if mcfg["init"] == "burn_dragon":
            sr = std / math.sqrt(L)
            enc = torch.randn(H, D, N, generator=g) * sr * _neuron_gains((H, 1, N), g)
            encv = torch.randn(H, D, N, generator=g) * sr * _neuron_gains((H, 1, N), g)
            dec = torch.randn(H * N, D, generator=g) * sr * _neuron_gains((H * N, 1), g)
        else:
            enc = torch.randn(H, D, N, generator=g) * std
            encv = torch.randn(H, D, N, generator=g) * std
            dec = torch.randn(H * N, D, generator=g) * std
        self.encoder = nn.Parameter(enc)                                            # [H,D,N]
        self.encoder_v = nn.Parameter(encv)                                         # [H,D,N]
        self.decoder = nn.Parameter(dec)                                            # [H*N,D]
        if not self.tie:
            self.lm_head = nn.Parameter(torch.randn(D, V, generator=g) * std)       # [D,V]
        else:
            self.lm_head = None
        if self.affine:
            self.norm_gamma = nn.Parameter(torch.ones(D))                           # [D]
            self.norm_beta = nn.Parameter(torch.zeros(D))                           # [D]
        else:
            self.norm_gamma = None
            self.norm_beta = None

        # constant buffers
        h = torch.arange(H, dtype=torch.float64)
        slopes = mcfg.get("alibi_slopes")
        if slopes is not None:
            if len(slopes) != H:
                raise SystemExit("alibi_slopes: %d values for %d heads" % (len(slopes), H))
            m_h = torch.tensor([float(x) for x in slopes], dtype=torch.float64)
        else:
            m_h = 2.0 ** (-h / H)                                           # MODEL.md 5
        self.register_buffer("alibi_m", m_h.float(), persistent=False)               # [H]
        self.register_buffer("gamma", torch.exp(-m_h).float(), persistent=False)     # [H]
        i = torch.arange(N, dtype=torch.float64)
        if self.positional == "rope":
            f = self.theta ** (-2.0 * torch.floor(i / 2.0) / N) / (2.0 * math.pi)
        else:
            f = self.theta ** (-i / N) / (2.0 * math.pi)
        self.register_buffer("freq_turns", f, persistent=False)             # [N] float64
        self.encf_frozen = None   # decode-only cache of enc_flat() (set by freeze_for_decode)

    # -- pieces -------------------------------------------------------------------------------
    def ln(self, x):
        return F.layer_norm(x, (self.D,), self.norm_gamma, self.norm_beta, self.eps)

    def enc_flat(self):
        """encoder [H,D,N] viewed as [D, H*N] (column index h*N+n)."""
        return self.encoder.permute(1, 0, 2).reshape(self.D, self.H * self.N)

    def head_out(self):
        return self.embed.t() if self.tie else self.lm_head

    def phases(self, pos):
        """pos: float64 [...] -> (cos, sin) float32 [..., N]; phase = 2 pi frac(p f)."""
        turns = pos[..., None] * self.freq_turns
        ph = (turns - torch.floor(turns)) * (2.0 * math.pi)
        return torch.cos(ph).float(), torch.sin(ph).float()

    def posq(self, x, cos, sin):
        """x [..., N] -> q by positional mode (alibi: x; rope: rotation; pope: [..., 2N])."""
        if self.positional == "alibi":
            return x
        cos = cos.to(x.dtype)
        sin = sin.to(x.dtype)
        if self.positional == "rope":
            x2 = x.unflatten(-1, (self.N // 2, 2))
            rot = torch.stack((-x2[..., 1], x2[..., 0]), dim=-1).flatten(-2)
            return x * cos + rot * sin
        mu = F.softplus(x)
        return torch.cat((mu * cos, mu * sin), dim=-1)

    def decay_mask(self, T, device, dtype):
        """[H,T,T] (alibi) or [T,T] (rope/pope): gamma^(t-s) for s<t, else 0 (tril(-1)).
        Built per call (cheap, and traceable by torch.compile)."""
        t = torch.arange(T, device=device)
        diff = (t[:, None] - t[None, :]).to(torch.float32)                  # [T,T]
        strict = diff > 0
        diff = diff.clamp(min=0.0)                  # no exp overflow above the diagonal
        if self.positional == "alibi":
            m = torch.exp(-self.alibi_m[:, None, None] * diff[None])        # [H,T,T]
            m = m * strict[None].to(torch.float32)
        else:
            m = strict.to(torch.float32)
        return m.to(dtype)

    # -- parallel (training) form ---------------------------------------------------------------
    def forward(self, idx, targets=None):
        """idx [B,T] long -> logits [B,T,V] (targets None) or mean CE loss (scalar)."""
        B, T = idx.shape
        D, H, N = self.D, self.H, self.N
        v = self.ln(F.embedding(idx, self.embed))                            # [B,T,D]
        if self.positional != "alibi":
            pos = torch.arange(T, device=idx.device, dtype=torch.float64)
            cos, sin = self.phases(pos)                                     # [T,N]
        else:
            cos = sin = None
        mask = None
        encf = self.enc_flat()
        for _ in range(self.L):
            x = F.relu(torch.matmul(v, encf) - self.thr) if self.thr else F.relu(
                torch.matmul(v, encf))                                      # [B,T,H*N]
            x = x.view(B, T, H, N)
            q = self.posq(x.transpose(1, 2), cos, sin)                      # [B,H,T,N|2N]
            sc = torch.matmul(q, q.transpose(-1, -2))                       # [B,H,T,T]
            if mask is None:
                mask = self.decay_mask(T, idx.device, sc.dtype)
            sc = sc * mask
            a = torch.matmul(sc.reshape(B, H * T, T), v)       # [B,H*T,D]
            a = self.ln(a.view(B, H, T, D))                                 # [B,H,T,D]
            a = a.permute(1, 0, 2, 3).reshape(H, B * T, D)                  # [H,B*T,D]
            y = torch.bmm(a, self.encoder_v)                                # [H,B*T,N]
            y = F.relu(y - self.thr) if self.thr else F.relu(y)
            y = y.view(H, B, T, N).permute(1, 2, 0, 3)                      # [B,T,H,N]
            z = F.dropout(x * y, self.p_drop, self.training)                # [B,T,H,N]
            u = self.ln(torch.matmul(z.reshape(B, T, H * N), self.decoder))  # [B,T,D]
            v = self.ln(v + u)
        logits = torch.matmul(v, self.head_out())                           # [B,T,V]
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(B * T, self.V).float(), targets.reshape(B * T))

    # -- recurrent (cached decode) form ---------------------------------------------------------
    def q_width(self):
        return 2 * self.N if self.positional == "pope" else self.N

    def new_state(self, S, device, dtype=torch.float32):
        """rho [L,S,H,Nq,D] zeros and positions [S] (int64)."""
        rho = torch.zeros(self.L, S, self.H, self.q_width(), self.D, device=device, dtype=dtype)
        pos = torch.zeros(S, dtype=torch.long, device=device)
        return rho, pos

    def step(self, tok, rho, pos):
        """One token per session. tok [S] long, rho [L,S,H,Nq,D] (updated in place),
        pos [S] long (incremented in place). Returns logits [S,V]."""
        S = tok.shape[0]
        D, H, N = self.D, self.H, self.N
        Nq = self.q_width()
        wdt = self.encoder.dtype
        v = self.ln(F.embedding(tok, self.embed))                            # [S,D]
        if self.positional != "alibi":
            cos, sin = self.phases(pos.to(torch.float64))                   # [S,N]
            cos, sin = cos[:, None, :], sin[:, None, :]                     # [S,1,N]
        else:
            cos = sin = None
        encf = self.encf_frozen if self.encf_frozen is not None else self.enc_flat()
        g = self.gamma.to(rho.dtype)[None, :, None, None]                    # [1,H,1,1]
        for l in range(self.L):
            x = torch.matmul(v, encf)
            x = F.relu(x - self.thr) if self.thr else F.relu(x)
            x = x.view(S, H, N)                                             # [S,H,N]
            q = self.posq(x, cos, sin).to(rho.dtype)                        # [S,H,Nq]
            r = rho[l]                                                      # [S,H,Nq,D]
            rf = r.view(S * H, Nq, D)
            a = torch.bmm(q.reshape(S * H, 1, Nq), rf).view(S, H, D)        # read before write
            vv = v.to(rho.dtype)[:, None, None, :].expand(S, H, 1, D).reshape(S * H, 1, D)
            rf.baddbmm_(q.reshape(S * H, Nq, 1), vv)                        # rho += q v^T
            if self.positional == "alibi":
                r.mul_(g)                                                   # rho *= gamma_h
            a = self.ln(a.to(wdt))                                          # [S,H,D]
            y = torch.bmm(a.transpose(0, 1), self.encoder_v)                # [H,S,N]
            y = F.relu(y - self.thr) if self.thr else F.relu(y)
            z = x * y.transpose(0, 1)                                       # [S,H,N]
            u = self.ln(torch.matmul(z.reshape(S, H * N), self.decoder))    # [S,D]
            v = self.ln(v + u)
        pos.add_(1)
        return torch.matmul(v, self.head_out())                             # [S,V]

    def freeze_for_decode(self):
        """Inference only: keep the [D, H*N] encoder layout instead of re-permuting per token."""
        with torch.no_grad():
            self.encf_frozen = self.enc_flat().contiguous()

    def n_params(self):
        return sum(p.numel() for p in self.parameters())


# ----------------------------------------------------------------------------------------------
# training helpers
# ----------------------------------------------------------------------------------------------

def lr_at(tcfg, k, total):
    """MODEL.md 6.2; k = 1,2,... optimizer step; total = num_iters (steps of this run)."""
    peak = float(tcfg["lr"])
    W = int(tcfg["warmup_steps"])
    if W > 0 and k <= W:
        return peak * k / W
    if tcfg["lr_schedule"] == "constant":
        return peak
    mn = float(tcfg["min_lr"])
    Tc = total - W
    if Tc <= 0:
        return mn
    c = k - W - 1
    return mn + 0.5 * (peak - mn) * (1.0 + math.cos(math.pi * (c % (Tc + 1)) / Tc))


def make_optimizer(model, tcfg, device, fused=False):
    kw = dict(lr=float(tcfg["lr"]), betas=(float(tcfg["beta1"]), float(tcfg["beta2"])),
              eps=float(tcfg["eps"]), weight_decay=float(tcfg["weight_decay"]))
    if fused and device.type == "cuda" and TORCH_MAJOR >= 2:
        kw["fused"] = True
    return torch.optim.AdamW(model.parameters(), **kw)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mem_gib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    # Linux ru_maxrss is KiB: whole-process peak resident set
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def setup_device(args):
    dev = torch.device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(int(args.threads))
        # gamma^(t-s) underflows into subnormals for long distances; x86 subnormal arithmetic is
        # ~100x slower. Flush them to zero (changes values below 1.2e-38 only).
        torch.set_flush_denormal(True)
    elif not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    else:
        torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
        torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    return dev


def autocast_ctx(args, dev):
    if args.bf16:
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return _Null()


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def build_model(cfg, V, dev, seed):
    torch.manual_seed(seed)
    model = Dragon(cfg["model"], V, seed=seed).to(dev)
    return model


def split_train(tokens, frac):
    n_train = int(math.floor(frac * tokens.numel()))
    return tokens[:n_train], tokens[n_train:]


class Trainer:
    """One optimizer step = forward + mean CE + backward + AdamW (lr from the schedule)."""

    def __init__(self, model, cfg, args, dev, total_steps):
        self.model = model
        self.tcfg = cfg["training"]
        self.dev = dev
        self.args = args
        self.total = total_steps
        self.opt = make_optimizer(model, self.tcfg, dev, fused=getattr(args, "fused", False))
        self.k = 0
        self.fwd = model
        if getattr(args, "compile", False):
            if not HAS_COMPILE:
                raise SystemExit("--compile needs PyTorch >= 2 (this is %s)" % torch.__version__)
            self.fwd = torch.compile(model, mode=args.compile_mode)

    def step(self, xb, yb):
        self.k += 1
        lr = lr_at(self.tcfg, self.k, self.total)
        for gr in self.opt.param_groups:
            gr["lr"] = lr
        with autocast_ctx(self.args, self.dev):
            loss = self.fwd(xb, yb)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss


def time_steps(fn, n_warm, n_steps, dev):
    """Runs fn() n_warm + n_steps times; returns (per-step seconds of the timed steps, last value).
    CUDA: events per step, one sync at the end; CPU: perf_counter per step."""
    last = None
    for _ in range(n_warm):
        last = fn()
    sync(dev)
    times = []
    if dev.type == "cuda":
        evs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
               for _ in range(n_steps)]
        t0 = time.perf_counter()
        for s, e in evs:
            s.record()
            last = fn()
            e.record()
        torch.cuda.synchronize(dev)
        wall = time.perf_counter() - t0
        times = [s.elapsed_time(e) / 1e3 for s, e in evs]
    else:
        t0 = time.perf_counter()
        for _ in range(n_steps):
            a = time.perf_counter()
            last = fn()
            times.append(time.perf_counter() - a)
        wall = time.perf_counter() - t0
    return times, wall, last


# ----------------------------------------------------------------------------------------------
# subcommands
# ----------------------------------------------------------------------------------------------

def run_train(args, out=True):
    cfg = load_config(args.config)
    dev = setup_device(args)
    tc = cfg["training"]
    B = args.batch or int(tc["batch_size"])
    T = args.block or int(tc["block_size"])
    seed = args.seed if args.seed is not None else int(tc["seed"])
    tokens, V = load_tokens(cfg, args.data)
    train_tok, _ = split_train(tokens, float(tc["train_frac"]))
    offsets = read_offsets(args.offsets, B) if args.offsets else None
    batcher = Batcher(train_tok, B, T, seed, offsets)
    model = build_model(cfg, V, dev, seed)
    model.train()
    n_warm = args.warmup
    total = n_warm + args.steps
    tr = Trainer(model, cfg, args, dev, total)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    # compile / first-step time shown separately
    c0 = time.perf_counter()
    xb, yb = batcher.next()
    loss = tr.step(xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True))
    sync(dev)
    first_s = time.perf_counter() - c0

    def one():
        xb, yb = batcher.next()
        return tr.step(xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True))

    times, wall, loss = time_steps(one, max(0, n_warm - 1), args.steps, dev)
    med = statistics.median(times)
    res = {
        "mode": "train", "impl": "dragon_torch", "torch": torch.__version__,
        "device": dev.type, "device_name": device_name(dev), "threads": args.threads,
        "config": os.path.basename(cfg["path"]), "batch": B, "block": T, "vocab": V,
        "params": model.n_params(), "positional": model.positional,
        "compile": bool(args.compile), "bf16": bool(args.bf16),
        "warmup_steps": n_warm, "steps": args.steps,
        "tokens_per_s": B * T / med, "ms_per_step": med * 1e3,
        "ms_per_step_min": min(times) * 1e3, "ms_per_step_max": max(times) * 1e3,
        "tokens_per_s_wall": B * T * args.steps / wall,
        "first_step_s": first_s, "peak_mem_gib": peak_mem_gib(dev),
        "peak_mem_kind": "cuda_max_allocated" if dev.type == "cuda" else "process_maxrss",
        "final_loss": float(loss.item()),
    }
    if out:
        emit(res, args)
    return res


def device_name(dev):
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def read_safetensors(path):
    """name -> float32 tensor, from a safetensors file (F32 tensors only: what dragond export
    writes). Written here so that the peer needs nothing beyond torch."""
    import struct
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    head = json.loads(blob[8:8 + n])
    base = 8 + n
    out = {}
    for name, meta in head.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] != "F32":
            raise SystemExit("%s: tensor %s is %s; only F32 is read" % (path, name, meta["dtype"]))
        lo, hi = meta["data_offsets"]
        t = torch.frombuffer(bytearray(blob[base + lo:base + hi]), dtype=torch.float32)
        out[name] = t.reshape(meta["shape"]) if meta["shape"] else t
    return out


def load_weights(model, path):
    """Copies a dragond safetensors export (tensor names of DESIGN.md §5) into the model."""
    w = read_safetensors(path)
    pairs = [("embed.weight", model.embed), ("encoder", model.encoder),
             ("encoder_v", model.encoder_v), ("decoder", model.decoder)]
    if model.lm_head is not None:
        pairs.append(("lm_head", model.lm_head))
    if model.norm_gamma is not None:
        pairs += [("norm.gamma", model.norm_gamma), ("norm.beta", model.norm_beta)]
    with torch.no_grad():
        for name, p in pairs:
            if name not in w:
                raise SystemExit("%s: no tensor %s" % (path, name))
            if tuple(w[name].shape) != tuple(p.shape):
                raise SystemExit("%s: %s is %s, the config needs %s"
                                 % (path, name, list(w[name].shape), list(p.shape)))
            p.copy_(w[name].to(p.device))


def run_decode(args, out=True):
    cfg = load_config(args.config)
    dev = setup_device(args)
    seed = args.seed if args.seed is not None else int(cfg["training"]["seed"])
    if args.weights:
        V = int(read_safetensors(args.weights)["embed.weight"].shape[0])
    elif args.data:
        _, V = load_tokens(cfg, args.data)
    else:
        V = args.vocab or (259 if cfg["training"]["tokenizer"] == "byte" else 69)
    model = build_model(cfg, V, dev, seed)
    if args.weights:
        load_weights(model, args.weights)
    model.eval()
    S = args.sessions
    sdt = torch.float32
    if args.bf16:
        keep = {"freq_turns": model.freq_turns, "gamma": model.gamma, "alibi_m": model.alibi_m}
        model = model.to(torch.bfloat16)
        for k, t in keep.items():          # positional constants stay fp64/fp32
            setattr(model, k, t)
        sdt = torch.bfloat16
    model.freeze_for_decode()
    rho, pos = model.new_state(S, dev, sdt)
    tok = torch.randint(4 if V > 4 else 0, V, (S,), generator=torch.Generator().manual_seed(seed))
    tok = tok.to(dev)

    def eager_step():
        logits = model.step(tok, rho, pos)
        tok.copy_(torch.argmax(logits, dim=-1))       # greedy feed-back, stays on device
        return logits

    graph = None
    if args.cuda_graph:
        if dev.type != "cuda":
            raise SystemExit("--cuda-graph needs --device cuda")
        with torch.no_grad():
            st = torch.cuda.Stream()
            st.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(st):
                for _ in range(3):                      # warm-up on a side stream (allocations)
                    eager_step()
            torch.cuda.current_stream().wait_stream(st)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                eager_step()
        fn = graph.replay
    else:
        fn = eager_step
    with torch.no_grad():
        times, wall, _ = time_steps(fn, args.warmup, args.tokens, dev)
    med = statistics.median(times)
    state_mib = rho.numel() * rho.element_size() / 2 ** 20 / S
    res = {
        "mode": "decode", "impl": "dragon_torch", "torch": torch.__version__,
        "device": dev.type, "device_name": device_name(dev), "threads": args.threads,
        "config": os.path.basename(cfg["path"]), "vocab": V, "sessions": S,
        "tokens": args.tokens, "warmup_tokens": args.warmup, "bf16": bool(args.bf16),
        "cuda_graph": graph is not None, "state_mib_per_session": state_mib,
        "tokens_per_s": S / med, "ms_per_token_step": med * 1e3,
        "tokens_per_s_wall": S * args.tokens / wall, "peak_mem_gib": peak_mem_gib(dev),
    }
    if out:
        emit(res, args)
    return res


@torch.no_grad()
def eval_loss(model, val_tok, B, T, dev, args):
    """Mean CE over all positions of the non-overlapping T-windows of the validation split
    (window k = val[kT : kT+T+1]); fresh state per window; dropout off."""
    n_win = (val_tok.numel() - 1) // T
    if n_win <= 0:
        raise SystemExit("validation split shorter than block+1")
    ar = torch.arange(T + 1)
    model.eval()
    tot, cnt = 0.0, 0
    for i in range(0, n_win, B):
        starts = torch.arange(i, min(i + B, n_win)) * T
        win = val_tok[starts[:, None] + ar[None, :]].to(dev)
        with autocast_ctx(args, dev):
            logits = model(win[:, :-1])
        ce = F.cross_entropy(logits.float().reshape(-1, model.V), win[:, 1:].reshape(-1),
                             reduction="sum")
        tot += float(ce)
        cnt += win[:, 1:].numel()
    model.train()
    return tot / cnt, n_win


def run_eval_epoch(args):
    cfg = load_config(args.config)
    dev = setup_device(args)
    tc = cfg["training"]
    B = args.batch or int(tc["batch_size"])
    T = args.block or int(tc["block_size"])
    seed = args.seed if args.seed is not None else int(tc["seed"])
    tokens, V = load_tokens(cfg, args.data)
    train_tok, val_tok = split_train(tokens, float(tc["train_frac"]))
    steps = args.steps or int(math.ceil(train_tok.numel() / (B * T)))
    offsets = read_offsets(args.offsets, B) if args.offsets else None
    if offsets is not None and len(offsets) < steps:
        raise SystemExit("offsets file has %d steps, need %d" % (len(offsets), steps))
    batcher = Batcher(train_tok, B, T, seed, offsets)
    model = build_model(cfg, V, dev, seed)
    model.train()
    tr = Trainer(model, cfg, args, dev, steps)
    t0 = time.perf_counter()
    losses = []
    for k in range(steps):
        xb, yb = batcher.next()
        loss = tr.step(xb.to(dev), yb.to(dev))
        losses.append(float(loss.item()))
        if args.verbose and (k % 10 == 0 or k == steps - 1):
            note("step %d/%d loss %.4f lr %.3g" % (k + 1, steps, losses[-1],
                                                   lr_at(tc, k + 1, steps)))
    sync(dev)
    train_s = time.perf_counter() - t0
    vl, n_win = eval_loss(model, val_tok, B, T, dev, args)
    res = {
        "mode": "eval-epoch", "impl": "dragon_torch", "torch": torch.__version__,
        "device": dev.type, "threads": args.threads, "config": os.path.basename(cfg["path"]),
        "seed": seed, "batch": B, "block": T, "vocab": V, "steps": steps,
        "offsets_file": args.offsets, "train_tokens": train_tok.numel(),
        "val_tokens": val_tok.numel(), "val_windows": n_win,
        "first_loss": losses[0], "final_loss": losses[-1],
        "train_loss_last10_mean": sum(losses[-10:]) / len(losses[-10:]),
        "val_loss": vl, "train_seconds": train_s,
    }
    emit(res, args)
    return res


def run_selftest(args):
    """Recurrent decode logits == parallel logits (fp32, dropout off), every positional mode,
    plus parameter counts from MODEL.md 1.3."""
    torch.set_num_threads(int(args.threads))
    torch.manual_seed(0)
    worst = {}
    ok = True
    cases = []
    for posm in ("alibi", "rope", "pope"):
        for norm, init in (("layer_norm_affine", "burn_dragon"), ("layer_norm", "normal_0.02")):
            cases.append(dict(MODEL_DEFAULTS, n_layer=3, n_embd=32, n_head=2,
                              mlp_internal_dim_multiplier=4, dropout=0.1, positional=posm,
                              norm=norm, init=init, relu_threshold=0.0))
    cases.append(dict(MODEL_DEFAULTS, positional="alibi", relu_threshold=0.001))  # base shape
    cases.append(dict(MODEL_DEFAULTS, positional="rope", tie_embeddings=True))
    for ci, mc in enumerate(cases):
        V = 37
        m = Dragon(mc, V, seed=100 + ci)
        if m.affine:  # make gamma/beta non-trivial so the shared norm is exercised
            with torch.no_grad():
                m.norm_gamma.add_(0.1 * torch.randn(m.D))
                m.norm_beta.add_(0.1 * torch.randn(m.D))
        m.eval()
        S, T = 3, 40
        idx = torch.randint(0, V, (S, T))
        with torch.no_grad():
            par = m(idx)                                                   # [S,T,V]
            if ci % 2:
                m.freeze_for_decode()                                      # both decode paths
            rho, pos = m.new_state(S, torch.device("cpu"))
            rec = torch.stack([m.step(idx[:, t], rho, pos) for t in range(T)], dim=1)
            m.encf_frozen = None
        err = float((par - rec).abs().max() / par.abs().max())
        key = "%s/%s/%s/D%d%s" % (mc["positional"], mc["norm"], mc["init"], mc["n_embd"],
                                  "/tied" if mc["tie_embeddings"] else "")
        worst[key] = err
        if not err < 1e-4:
            note("recurrent vs parallel rel err %.3g in case %s" % (err, key))
            ok = False
        # training mode: dropout changes the loss, backward produces finite grads everywhere
        m.train()
        loss = m(idx[:, :-1], idx[:, 1:])
        loss.backward()
        for n_, p in m.named_parameters():
            if p.grad is None or not torch.isfinite(p.grad).all():
                ok = False
                note("bad grad for %s in case %s" % (n_, key))
    # parameter counts (MODEL.md 1.3; ours has no alpha/shift scalars)
    base = Dragon(dict(MODEL_DEFAULTS), 69)
    paper = Dragon(dict(MODEL_DEFAULTS, n_layer=6, mlp_internal_dim_multiplier=128,
                        positional="rope", norm="layer_norm", init="normal_0.02"), 256)
    counts = {"base_V69": base.n_params(), "paper_V256": paper.n_params()}
    if counts["base_V69"] != 822274 - 2 or counts["paper_V256"] != 25296896:
        note("parameter counts differ from MODEL.md 1.3: %s" % counts)
        ok = False
    # schedule (MODEL.md 6.2): step 1 = peak, min_lr is reached at c = Tc, i.e. step total+1
    tcfg = dict(TRAIN_DEFAULTS)
    if abs(lr_at(tcfg, 83, 82) - tcfg["min_lr"]) > 1e-12 or abs(lr_at(tcfg, 1, 82) - 1e-3) > 1e-12:
        note("lr schedule check failed")
        ok = False
    res = {"mode": "selftest", "ok": ok, "torch": torch.__version__,
           "max_rel_err_recurrent_vs_parallel": worst, "param_counts": counts}
    emit(res, args)
    if not ok:
        sys.exit(1)
    return res


def emit(res, args):
    if getattr(args, "json", False):
        print(json.dumps(res), flush=True)
    else:
        for k, v in res.items():
            print("%-28s %s" % (k, v))


def build_parser():
    p = argparse.ArgumentParser(description="PyTorch Dragon/BDH peer (MODEL.md 1-7)")
    sub = p.add_subparsers(dest="cmd")

    def common(sp):
        sp.add_argument("--config", required=True)
        sp.add_argument("--data", default=None, help="text file (tokenized per config)")
        sp.add_argument("--threads", type=int, default=2)
        sp.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
        sp.add_argument("--bf16", action="store_true", help="bf16 autocast (decode: bf16 model"
                        " and state)")
        sp.add_argument("--tf32", action="store_true")
        sp.add_argument("--seed", type=int, default=None)
        sp.add_argument("--json", action="store_true")

    def train_opts(sp):
        sp.add_argument("--batch", type=int, default=None)
        sp.add_argument("--block", type=int, default=None)
        sp.add_argument("--offsets", default=None, help="batch-offset file (one line per step)")
        sp.add_argument("--compile", action="store_true", help="torch.compile (PyTorch >= 2)")
        sp.add_argument("--compile-mode", default="default")
        sp.add_argument("--fused", action="store_true", help="fused AdamW (CUDA, PyTorch >= 2)")

    t = sub.add_parser("train", help="timed training steps")
    common(t)
    train_opts(t)
    t.add_argument("--steps", type=int, default=5, help="timed steps")
    t.add_argument("--warmup", type=int, default=1, help="untimed steps (>= 1)")

    d = sub.add_parser("decode", help="cached recurrent decode")
    common(d)
    d.add_argument("--sessions", type=int, default=1)
    d.add_argument("--tokens", type=int, default=64, help="timed tokens per session")
    d.add_argument("--warmup", type=int, default=4)
    d.add_argument("--vocab", type=int, default=None, help="vocab when no --data")
    d.add_argument("--cuda-graph", action="store_true")
    d.add_argument("--weights", default=None,
                   help="a trained model: safetensors file written by `dragond export`")

    e = sub.add_parser("eval-epoch", help="one epoch of training, then validation loss")
    common(e)
    train_opts(e)
    e.add_argument("--steps", type=int, default=None, help="default: ceil(train/(B*T))")
    e.add_argument("--verbose", action="store_true")

    s = sub.add_parser("selftest", help="recurrent == parallel, parameter counts")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--json", action="store_true")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.cmd == "train":
        if args.warmup < 1:
            args.warmup = 1
        run_train(args)
    elif args.cmd == "decode":
        run_decode(args)
    elif args.cmd == "eval-epoch":
        run_eval_epoch(args)
    elif args.cmd == "selftest":
        run_selftest(args)
    else:
        build_parser().print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
