"""Builds the `digits` example dataset folder from two real, freely licensed datasets.

- Handwritten digits: scikit-learn's `load_digits` (1,797 8x8 scans, 16 grey levels; a copy of the test set of
  the UCI "Optical Recognition of Handwritten Digits" data, E. Alpaydin and C. Kaynak, CC BY 4.0).
- Spoken digits: the Free Spoken Digit Dataset (FSDD, Jakobovski et al., CC BY-SA 4.0), 8 kHz 16-bit WAV.

Each of 1,500 pairs joins one handwritten scan with one recording (the written and the spoken digit are drawn
independently), and asks four questions about it: the written digit (needs the image), the spoken digit (needs
the audio), whether the written digit is larger than the spoken one, and their sum (both need the two). There is
no `qtype` column, as in most users' data: ingest derives the question type from the question's template.
The `modalities` column declares what each answer needs (`image`, `audio tabular`, `image audio tabular`): the
model masks the rest, and select derives intermediate answer tokens for the questions that need both.
The split is the user's, declared per pair: FSDD's conventional test recordings (indices 0-4) are the test
split, indices 5-7 val, 8-24 train. `speaker` and `duration_s` are tabular features.

The committed folder is this script's output; a fresh clone needs neither this script nor a network.
Regenerate (needs scikit-learn 1.9, numpy, pillow and the FSDD recordings):

    python3 examples/digits/build.py --fsdd ../shared/data/fsdd --out examples/digits
"""
import argparse, csv, os, shutil, wave

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

PER_SPEAKER_DIGIT = 25  # recording indices 0..24 of every speaker and digit: 6 x 10 x 25 = 1,500 pairs


def split_of(index):
    return "test" if index < 5 else "val" if index < 8 else "train"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fsdd", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    speakers = {}
    with open(os.path.join(args.fsdd, "speakers.csv")) as f:
        for row in csv.DictReader(f):
            speakers[row["speaker"]] = row
    recordings = []
    for name in sorted(os.listdir(os.path.join(args.fsdd, "recordings"))):
        digit, speaker, index = name[:-4].split("_")
        if int(index) < PER_SPEAKER_DIGIT:
            recordings.append((name, int(digit), speaker, int(index)))
    assert len(recordings) == 6 * 10 * PER_SPEAKER_DIGIT, len(recordings)

    digits = load_digits()
    order = rng.permutation(len(digits.images))[: len(recordings)]
    rng.shuffle(recordings)

    for sub in ("images", "audio"):
        shutil.rmtree(os.path.join(args.out, sub), ignore_errors=True)
        os.makedirs(os.path.join(args.out, sub))
    rows = []
    for pair, ((name, spoken, speaker, index), img) in enumerate(zip(recordings, order)):
        written = int(digits.target[img])
        pixels = np.round(digits.images[img] * (255 / 16)).astype(np.uint8)
        image_rel = f"images/{img:04d}.png"
        Image.fromarray(pixels, mode="L").save(os.path.join(args.out, image_rel), optimize=True)
        audio_rel = f"audio/{name}"
        shutil.copyfile(os.path.join(args.fsdd, "recordings", name), os.path.join(args.out, audio_rel))
        with wave.open(os.path.join(args.out, audio_rel)) as w:
            duration = w.getnframes() / w.getframerate()
        questions = [
            ("which digit is written?", str(written), "image"),
            ("which digit is spoken?", str(spoken), "audio tabular"),
            ("is the written digit larger than the spoken digit?", "yes" if written > spoken else "no",
             "image audio tabular"),
            ("what is the written digit plus the spoken digit?", str(written + spoken), "image audio tabular"),
        ]
        for q, (question, answer, modalities) in enumerate(questions):
            rows.append({
                "id": f"p{pair:04d}q{q}",
                "image": image_rel,
                "audio": audio_rel,
                "question": question,
                "answer": answer,
                "modalities": modalities,
                "split": split_of(index),
                "speaker": speaker,
                "duration_s": f"{duration:.3f}",
            })
    with open(os.path.join(args.out, "manifest.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} rows, {len(recordings)} pairs -> {args.out}")


if __name__ == "__main__":
    main()
