"""Write the vision example's data: scikit-learn's 1,797 real 8×8 handwritten digits as PNG
files in one folder per class, and a tiny ViT to fine-tune (nothing is downloaded).

    python examples/data/make_digits.py      # examples/data/digits/{train,validation}/<digit>/*.png
                                             # and examples/models/tiny-vit

The split is seeded (1,497 training and 300 validation images). The ViT is randomly
initialised (2 layers, 32×32 input): it stands in for a real checkpoint; point model.path
at any local ViT/DeiT/ConvNeXt folder for real work.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path


def digit_images():
    """(index, split, digit, PIL image) for each of scikit-learn's 1,797 digits; the split
    is seeded (1,497 train, 300 validation)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = list(range(len(digits.images)))
    random.Random(0).shuffle(order)
    for position, i in enumerate(order):
        pixels = (digits.images[i] / 16.0 * 255).astype(np.uint8)
        split = "validation" if position < 300 else "train"
        yield i, split, int(digits.target[i]), Image.fromarray(pixels, mode="L")


def main(root: Path) -> None:
    count = 0
    for i, split, digit, image in digit_images():
        folder = root / "data" / "digits" / split / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:04d}.png")
        count += 1
    from raft.testing import make_tiny_vision_model

    make_tiny_vision_model(root / "models" / "tiny-vit")
    print(f"wrote {count} digits to {root / 'data' / 'digits'} and {root / 'models' / 'tiny-vit'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
