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


def main(root: Path) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = list(range(len(digits.images)))
    random.Random(0).shuffle(order)
    splits = {"validation": order[:300], "train": order[300:]}
    for split, indices in splits.items():
        for i in indices:
            folder = root / "data" / "digits" / split / str(int(digits.target[i]))
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] / 16.0 * 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    from raft.testing import make_tiny_vision_model

    make_tiny_vision_model(root / "models" / "tiny-vit")
    print(f"wrote {len(order)} digits to {root / 'data' / 'digits'} and {root / 'models' / 'tiny-vit'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
