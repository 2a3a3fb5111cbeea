"""scikit-learn baselines on the exact split a pipeline run used, printed beside the run's own test figures.

    python3 examples/digits/baselines.py artifacts/digits        # after `cargo xtask pipeline --config pipelines/digits.toml`

Reads the run's `select/samples.parquet` (every row with its split, question, answer and media bytes) and its
`eval/metrics.json`, fits on train only, scores the test split, and prints exact match per question type:

- `majority`: the most frequent train answer of the question type.
- `logreg`: one logistic regression per question type on simple features of everything the row holds (image
  pixels at 8x8, the clip's log-mel spectrogram at 16 frames plus per-band mean and deviation, the tabular
  columns one-hot or scaled); C chosen by 3-fold cross-validation on train.
- `logreg composed`: for question types whose rows declare (`modalities` column) that they need one medium, a
  logistic regression on that medium's features; for types that need the image and the audio, a logistic
  regression on the outer product of the two single-medium models' class probabilities (out-of-fold on train),
  which can represent any function of the two readings: the composition the task asks for, learned.

Needs numpy, pyarrow, pillow and scikit-learn (`pip install numpy pyarrow pillow scikit-learn`).
"""
import hashlib, io, json, os, sys, wave

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_predict
from sklearn.preprocessing import StandardScaler

SEED = 0


def image_features(png):
    img = Image.open(io.BytesIO(png)).convert("L").resize((8, 8), Image.BILINEAR)
    return np.asarray(img, dtype=np.float64).ravel() / 255.0


def mel_filterbank(sr, n_fft, n_mels):
    mel = lambda f: 2595 * np.log10(1 + f / 700)
    inv = lambda m: 700 * (10 ** (m / 2595) - 1)
    points = inv(np.linspace(mel(0), mel(sr / 2), n_mels + 2))
    bins = np.floor((n_fft + 1) * points / sr).astype(int)
    fb = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(1, n_mels + 1):
        lo, c, hi = bins[m - 1], bins[m], bins[m + 1]
        for k in range(lo, c):
            fb[m - 1, k] = (k - lo) / max(c - lo, 1)
        for k in range(c, hi):
            fb[m - 1, k] = (hi - k) / max(hi - c, 1)
    return fb


def audio_features(wav, sr_out=8000, n_fft=256, hop=128, n_mels=32, frames=16):
    with wave.open(io.BytesIO(wav)) as w:
        sr, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
        raw = w.readframes(n)
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
    x = np.frombuffer(raw, dtype=dtype).astype(np.float64)
    if width == 1:
        x -= 128
    x = x.reshape(-1, ch).mean(axis=1)
    if sr != sr_out:
        x = np.interp(np.arange(0, len(x), sr / sr_out), np.arange(len(x)), x)
    x /= np.abs(x).max() + 1e-9
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    starts = range(0, len(x) - n_fft + 1, hop)
    spec = np.abs(np.stack([np.fft.rfft(x[s:s + n_fft] * np.hanning(n_fft)) for s in starts])) ** 2
    logmel = np.log(spec @ mel_filterbank(sr_out, n_fft, n_mels).T + 1e-6)  # frames x mels
    t = np.linspace(0, len(logmel) - 1, frames)
    resampled = np.stack([np.interp(t, np.arange(len(logmel)), logmel[:, m]) for m in range(n_mels)], axis=1)
    return np.concatenate([resampled.ravel(), logmel.mean(0), logmel.std(0)])


def logreg():
    return GridSearchCV(LogisticRegression(max_iter=3000), {"C": [0.01, 0.1, 1.0, 10.0]}, cv=3)


def fit(x_train, y_train):
    scaler = StandardScaler().fit(x_train)
    model = logreg().fit(scaler.transform(x_train), y_train)
    return model, scaler


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "artifacts/digits"
    table = pq.read_table(os.path.join(root, "select", "samples.parquet")).to_pydict()
    n = len(table["id"])
    split = np.array(table["split"])
    qtype = np.array([q or "" for q in table["qtype"]])
    answer = np.array(table["answer"])
    needs = [set((m or "").replace("|", " ").replace(",", " ").split()) & {"image", "audio"}
             for m in table.get("modalities", [None] * n)]
    has_image = all(b is not None for b in table["image"])
    has_audio = all(b is not None for b in table["audio"])
    feats = {}
    if has_image:
        feats["image"] = np.stack([image_features(b) for b in table["image"]])
    if has_audio:
        feats["audio"] = np.stack([audio_features(b) for b in table["audio"]])
    fixed = {"id", "split", "task", "qtype", "question", "answer", "image", "audio", "source_line", "repeat",
             "modalities", "rationale"}
    tab = []
    for name, values in table.items():
        if name in fixed:
            continue
        if all(v is None or isinstance(v, (int, float)) for v in values):
            v = np.array([np.nan if x is None else x for x in values], dtype=np.float64)
            med = np.nanmedian(v[split == "train"])
            tab.append(np.nan_to_num(v, nan=med)[:, None])
        else:
            cats = sorted({v for v, s in zip(values, split) if s == "train" and v is not None})
            tab.append(np.array([[v == c for c in cats] for v in values], dtype=np.float64))
    if tab:
        feats["tabular"] = np.concatenate(tab, axis=1)
    everything = np.concatenate(list(feats.values()), axis=1)

    train, test = split == "train", split == "test"
    results = {}
    # Single-medium models, for the composed baseline: medium -> (qtype, model, scaler).
    single = {}
    for q in sorted(set(qtype)):
        tr, te = train & (qtype == q), test & (qtype == q)
        if te.sum() == 0:
            continue
        values, counts = np.unique(answer[tr], return_counts=True)
        majority = values[counts.argmax()]
        row = {"rows": int(te.sum()), "majority": float((answer[te] == majority).mean())}
        model, scaler = fit(everything[tr], answer[tr])
        row["logreg"] = float((model.predict(scaler.transform(everything[te])) == answer[te]).mean())
        q_needs = {frozenset(needs[i]) for i in np.where(qtype == q)[0]}
        if len(q_needs) == 1:
            (medium_set,) = q_needs
            if len(medium_set) == 1:
                (medium,) = medium_set
                if medium in feats:
                    m, s = fit(feats[medium][tr], answer[tr])
                    single.setdefault(medium, (q, m, s))
                    row["logreg composed"] = float((m.predict(s.transform(feats[medium][te])) == answer[te]).mean())
        results[q] = row

    # Two-medium types: logistic regression on the outer product of the single-medium class probabilities.
    # The composer trains on out-of-fold readings of the train media, so they are as noisy as test's.
    if "image" in single and "audio" in single:
        reading = {}
        for medium in ("image", "audio"):
            q, m, s = single[medium]
            rows = np.where(train & (qtype == q))[0]
            x = s.transform(feats[medium][rows])
            est = LogisticRegression(C=m.best_params_["C"], max_iter=3000)
            oof = cross_val_predict(est, x, answer[rows], cv=5, method="predict_proba")
            by_media = {hashlib.blake2b(table[medium][i]).digest(): p for i, p in zip(rows, oof)}

            def read(rows, medium=medium, m=m, s=s, by_media=by_media):
                full = m.predict_proba(s.transform(feats[medium][rows]))
                keys = [hashlib.blake2b(table[medium][i]).digest() for i in rows]
                return np.stack([by_media.get(k, f) if split[i] == "train" else f
                                 for k, f, i in zip(keys, full, rows)])
            reading[medium] = read

        for q, row in results.items():
            q_rows = np.where(qtype == q)[0]
            if not all(needs[i] == {"image", "audio"} for i in q_rows):
                continue
            outer = lambda rows: np.einsum("ni,nj->nij", reading["image"](rows),
                                           reading["audio"](rows)).reshape(len(rows), -1)
            tr, te = q_rows[split[q_rows] == "train"], q_rows[split[q_rows] == "test"]
            composer = LogisticRegression(C=10.0, max_iter=5000).fit(outer(tr), answer[tr])
            row["logreg composed"] = float((composer.predict(outer(te)) == answer[te]).mean())

    metrics_path = os.path.join(root, "eval", "metrics.json")
    ours = {}
    if os.path.exists(metrics_path):
        m = json.load(open(metrics_path))
        ours["mmrl"] = m["test"]["by_question"], m["test"]["exact_match"]
        for name, report in m.get("baselines", {}).items():
            if name == "sft":
                ours["mmrl sft"] = report["by_question"], report["exact_match"]
    total = sum(r["rows"] for r in results.values())
    cols = list(ours) + ["logreg", "logreg composed", "majority"]
    print("| question type | test rows | " + " | ".join(cols) + " |")
    print("| --- | --- |" + " --- |" * len(cols))
    overall = {c: 0.0 for c in cols}
    counted = {c: 0 for c in cols}
    for q, row in results.items():
        cells = []
        for c in cols:
            v = ours[c][0].get(q) if c in ours else row.get(c)
            cells.append("" if v is None else f"{v:.3f}")
            if v is not None:
                overall[c] += v * row["rows"]
                counted[c] += row["rows"]
        print(f"| {q} | {row['rows']} | " + " | ".join(cells) + " |")
    cells = [f"{ours[c][1]:.3f}" if c in ours else
             (f"{overall[c] / counted[c]:.3f}" if counted[c] == total else "") for c in cols]
    print(f"| all | {total} | " + " | ".join(cells) + " |")
    json.dump({"by_question": results}, open(os.path.join(root, "sklearn_baselines.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
