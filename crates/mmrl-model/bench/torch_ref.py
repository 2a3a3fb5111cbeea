"""Reference: the mmrl-model tiny preset and its training step in PyTorch (eager, fp32), same shapes as
`mmrl-model bench` (batch 32, image 3x32x32 in 8x8 patches, audio 32 mels x 32 frames in 4-frame patches,
6 numeric + 1 categorical tabular features, 8 question words, answers of 2 tokens + eos; dropout 0.1;
AdamW; global grad-norm clipping 1.0).

    TORCH_THREADS=2 python3 torch_ref.py [d_model enc_layers dec_layers heads batch steps]
    TORCH_DEVICE=cuda python3 torch_ref.py 256 6 2 8 128 20   # the base preset on the GPU

On a GPU the model and the inputs live on the device (created there once), and the clock is read after
`torch.cuda.synchronize()`.
"""
import json, os, sys, time
import torch, torch.nn as nn, torch.nn.functional as F

if os.environ.get("TORCH_THREADS"):
    torch.set_num_threads(int(os.environ["TORCH_THREADS"]))
dev = torch.device(os.environ.get("TORCH_DEVICE", "cpu"))
torch.set_default_device(dev)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()

d, enc_layers, dec_layers, heads, batch, steps = [int(a) for a in (sys.argv[1:7] + ["64", "2", "1", "4", "32", "20"][len(sys.argv[1:7]):])]
QV, AV, LQ, P, MELS, FR, PF, NUM, LA = 40, 30, 8, 8, 32, 32, 4, 6, 3
drop = 0.1


class Attn(nn.Module):
    def __init__(self, cross):
        super().__init__()
        self.cross = cross
        self.q = nn.Linear(d, d if cross else 3 * d)
        self.kv = nn.Linear(d, 2 * d) if cross else None
        self.o = nn.Linear(d, d)

    def forward(self, x, mem, bias, kv=None):
        b, n, _ = x.shape
        if self.cross:
            q = self.q(x); k, v = (self.kv(mem) if kv is None else kv).split(d, 2)
        else:
            q, k, v = self.q(x).split(d, 2)
        sh = lambda t: t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2)
        q, k, v = sh(q), sh(k), sh(v)
        w = torch.softmax(q * (d // heads) ** -0.5 @ k.transpose(2, 3) + bias, -1)
        return self.o((w @ v).transpose(1, 2).reshape(b, n, d))


class Enc(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.a, self.n2 = nn.LayerNorm(d), Attn(False), nn.LayerNorm(d)
        self.f = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, bias):
        x = x + F.dropout(self.a(self.n1(x), None, bias), drop, self.training)
        return x + F.dropout(self.f(self.n2(x)), drop, self.training)


class Dec(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.s, self.n2, self.c, self.n3 = nn.LayerNorm(d), Attn(False), nn.LayerNorm(d), Attn(True), nn.LayerNorm(d)
        self.f = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, y, mem, bias, causal, kv=None):
        y = y + F.dropout(self.s(self.n1(y), None, causal), drop, self.training)
        y = y + F.dropout(self.c(self.n2(y), mem, bias, kv), drop, self.training)
        return y + F.dropout(self.f(self.n3(y)), drop, self.training)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        e = lambda *s: nn.Parameter(torch.randn(*s) * 0.02)
        self.fusion, self.types, self.qe, self.qp = e(1, d), e(5, d), e(QV, d), e(16, d)
        self.img, self.ipos = nn.Linear(3 * P * P, d), e((32 // P) ** 2, d)
        self.aud, self.apos = nn.Linear(MELS * PF, d), e(FR // PF, d)
        self.nw, self.nb, self.cat = e(NUM, d), e(NUM, d), e(7, d)
        self.enc, self.en = nn.ModuleList([Enc() for _ in range(enc_layers)]), nn.LayerNorm(d)
        self.ae, self.ap = e(AV, d), e(5, d)
        self.dec, self.dn, self.head = nn.ModuleList([Dec() for _ in range(dec_layers)]), nn.LayerNorm(d), nn.Linear(d, AV)

    def forward(self, q, img, aud, num, cat, dec_in, bias, causal):
        b = q.shape[0]
        g = 32 // P
        patches = img.reshape(b, 3, g, P, g, P).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, 3 * P * P)
        frames = aud.transpose(1, 2).reshape(b, FR // PF, PF * MELS)
        x = torch.cat([
            self.fusion.expand(b, 1, d) + self.types[0],
            self.qe[q] + self.qp[:LQ] + self.types[1],
            self.img(patches) + self.ipos + self.types[2],
            self.aud(frames) + self.apos + self.types[3],
            num.unsqueeze(2) * self.nw + self.nb + self.types[4],
            self.cat[cat] + self.types[4],
        ], 1)
        x = F.dropout(x, drop, self.training)
        for l in self.enc:
            x = l(x, bias)
        mem = self.en(x)
        y = F.dropout(self.ae[dec_in] + self.ap[: dec_in.shape[1]], drop, self.training)
        for l in self.dec:
            y = l(y, mem, bias, causal)
        return self.head(self.dn(y))


m = Model().to(dev)
print(sum(p.numel() for p in m.parameters()), "parameters", file=sys.stderr)
opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01)
q = torch.randint(2, QV, (batch, LQ)); img = torch.rand(batch, 3, 32, 32) * 2 - 1; aud = torch.rand(batch, MELS, FR) * 2 - 1
num = torch.full((batch, NUM), 0.5); cat = torch.ones(batch, 1, dtype=torch.long)
dec_in = torch.full((batch, LA), 2); tgt = torch.full((batch, LA), 4)
n_tok = 1 + LQ + (32 // P) ** 2 + FR // PF + NUM + 1
bias = torch.zeros(batch, 1, 1, n_tok)
causal = torch.triu(torch.full((LA, LA), -1e9), 1).reshape(1, 1, LA, LA)
for step in range(2 + steps):
    if step == 2:
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
    opt.zero_grad(set_to_none=True)
    logits = m(q, img, aud, num, cat, dec_in, bias, causal)
    loss = F.cross_entropy(logits.reshape(-1, AV), tgt.reshape(-1))
    loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step()
sync()
dt, dc = time.perf_counter() - t0, time.process_time() - c0
train, train_cpu = steps * batch / dt, steps * batch / dc

# Inference as `mmrl-model bench` measures it: batch 256, eval mode, the encoder once, then greedy decoding
# rerunning the decoder on the growing prefix (no self-attention KV cache; the cross-attention keys and values
# of the memory are projected once) until every row emitted <eos> or 5 steps.
IB, MAXLEN, BOS, EOS = 256, 4, 2, 3
m.eval()
qi = torch.randint(2, QV, (IB, LQ)); imgi = torch.rand(IB, 3, 32, 32) * 2 - 1; audi = torch.rand(IB, MELS, FR) * 2 - 1
numi = torch.full((IB, NUM), 0.5); cati = torch.ones(IB, 1, dtype=torch.long); biasi = torch.zeros(IB, 1, 1, n_tok)


def generate():
    with torch.no_grad():
        g = 32 // P
        patches = imgi.reshape(IB, 3, g, P, g, P).permute(0, 2, 4, 1, 3, 5).reshape(IB, g * g, 3 * P * P)
        frames = audi.transpose(1, 2).reshape(IB, FR // PF, PF * MELS)
        x = torch.cat([
            m.fusion.expand(IB, 1, d) + m.types[0], m.qe[qi] + m.qp[:LQ] + m.types[1],
            m.img(patches) + m.ipos + m.types[2], m.aud(frames) + m.apos + m.types[3],
            numi.unsqueeze(2) * m.nw + m.nb + m.types[4], m.cat[cati] + m.types[4]], 1)
        for l in m.enc:
            x = l(x, biasi)
        mem = m.en(x)
        kvs = [l.c.kv(mem) for l in m.dec]  # cross-attention keys/values of the memory, once (as mmrl-model)
        prefix = torch.full((IB, 1), BOS); done = torch.zeros(IB, dtype=torch.bool)
        for step in range(MAXLEN + 1):
            n = prefix.shape[1]
            causal_n = torch.triu(torch.full((n, n), -1e9), 1).reshape(1, 1, n, n)
            y = m.ae[prefix] + m.ap[:n]
            for l, kv in zip(m.dec, kvs):
                y = l(y, mem, biasi, causal_n, kv)
            logits = m.head(m.dn(y))[:, -1]
            tok = torch.log_softmax(logits, -1).argmax(-1)
            tok = torch.where(done, torch.zeros_like(tok), tok)
            done = done | (tok == EOS)
            prefix = torch.cat([prefix, tok[:, None]], 1)
            if bool(done.all()):
                break


generate()
ROUNDS = 10
t0, c0 = time.perf_counter(), time.process_time()
for _ in range(ROUNDS):
    generate()
sync()
infer, infer_cpu = ROUNDS * IB / (time.perf_counter() - t0), ROUNDS * IB / (time.process_time() - c0)
print(json.dumps({"impl": f"torch-{torch.__version__}", "device": str(dev), "d": d, "batch": batch,
                  "train_samples_per_s": round(train, 1), "infer_samples_per_s": round(infer, 1),
                  "train_samples_per_cpu_s": round(train_cpu, 1), "infer_samples_per_cpu_s": round(infer_cpu, 1)}))
