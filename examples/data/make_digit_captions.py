"""Write the image-text example's data: scikit-learn's 1,797 real handwritten digits, each
with a caption in one of several phrasings ("a handwritten seven", "the number 7 written by
hand", ...), and a tiny CLIP to fine-tune (nothing is downloaded).

    python examples/data/make_digit_captions.py   # examples/data/digit_captions/{train,validation}.jsonl
                                                  # + images/, and examples/models/tiny-clip

Each jsonl row is {"image": path relative to the file, "caption", "label": digit name};
the label lets raft score zero-shot classification ("a handwritten {}" for each digit).
The split is the vision example's (1,497 train, 300 validation). The CLIP is randomly
initialised: it stands in for a real checkpoint; point model.path at a local CLIP folder
for real work.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_digits import digit_images  # noqa: E402

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CAPTIONS = [
    "a handwritten {name}",
    "the number {digit} written by hand",
    "a scanned digit {name}",
    "{name}",
]


def main(root: Path) -> None:
    from raft.testing import make_tiny_clip_model

    data = root / "data" / "digit_captions"
    (data / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rows: dict[str, list[dict]] = {"train": [], "validation": []}
    for i, split, digit, image in digit_images():
        relative = f"images/{i:04d}.png"
        image.save(data / relative)
        caption = rng.choice(CAPTIONS).format(name=NAMES[digit], digit=digit)
        rows[split].append({"image": relative, "caption": caption, "label": NAMES[digit]})
    for split, split_rows in rows.items():
        with (data / f"{split}.jsonl").open("w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in split_rows)
    words = NAMES + [str(d) for d in range(10)]
    words += [w for c in CAPTIONS for w in c.replace("{name}", "").replace("{digit}", "").split()]
    make_tiny_clip_model(root / "models" / "tiny-clip", words=words)
    print(f"wrote {sum(map(len, rows.values()))} captioned digits to {data} and a tiny CLIP")


if __name__ == "__main__":
    main(Path(__file__).resolve().parents[1])
