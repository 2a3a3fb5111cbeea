"""Side-by-side table of gpu/run.sh's results.jsonl: mmrl's bench beside PyTorch on the same shapes."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
torch = {(r["preset"], r["batch"]): r["r"] for r in rows if r["impl"] == "torch"}


def fmt(v):
    return "n/a" if v is None else f"{v:,.0f}"


def ratio(a, b):
    return "n/a" if not a or not b else f"{a / b:.3f}x"


print("| run | train samples/s | torch | ratio | inference samples/s (batch 256) | torch | ratio |"
      " ms/step forward / backward / clip+wait / loss read / optimizer |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    if r["impl"] == "torch":
        continue
    t = torch.get((r["preset"], r["batch"]), {})
    m = r["r"]
    p = m.get("train_phases_ms", {})
    phases = " / ".join(f"{p.get(k, 0):.1f}" for k in ("forward", "backward", "clip", "loss_read", "optimizer"))
    name = f'{r["impl"]} {r["preset"]} b{r["batch"]} {r["args"]}'.strip()
    print(f'| {name} | {fmt(m["train_samples_per_s"])} | {fmt(t.get("train_samples_per_s"))} | '
          f'{ratio(m["train_samples_per_s"], t.get("train_samples_per_s"))} | {fmt(m["infer_samples_per_s"])} | '
          f'{fmt(t.get("infer_samples_per_s"))} | {ratio(m["infer_samples_per_s"], t.get("infer_samples_per_s"))} | '
          f'{phases} |')
for (preset, batch), t in torch.items():
    print(f'torch {preset} b{batch}: {json.dumps(t)}')
