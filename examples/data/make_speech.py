"""Write the speech example's data: spoken digit strings ("four nine two") as wav files with
a jsonl of transcripts, and a tiny Whisper to fine-tune (nothing is downloaded).

    python examples/data/make_speech.py      # examples/data/speech/{train,validation}.jsonl + clips/
                                             # and examples/models/tiny-whisper

The clips are synthesized by espeak-ng: several English voices and variants, speaking
rates and pitches, at espeak's 22.05 kHz (raft resamples them to the model's 16 kHz).
Validation uses voices that training never hears. Install it with
``apt-get install espeak-ng`` (Debian/Ubuntu) or ``brew install espeak-ng`` (macOS).
Without it the script falls back to raft's toy tone "words" (raft.testing), so the example
still runs end to end.

The Whisper is randomly initialised (2+2 layers, a 2 s window): it stands in for a real
checkpoint; point model.path at a local whisper-tiny/base/small folder for real work.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TRAIN_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan"]
VALIDATION_VOICES = ["en-029", "en-gb-x-gbcwmd"]
VARIANTS = ["", "+m1", "+m3", "+f1", "+f3"]


def speak(text: str, voice: str, speed: int, pitch: int, path: Path) -> None:
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
        check=True,
        capture_output=True,
    )


def write_split(root: Path, name: str, count: int, voices: list[str], rng: random.Random) -> None:
    rows = []
    for i in range(count):
        words = [rng.choice(DIGITS) for _ in range(rng.randint(1, 3))]
        voice = rng.choice(voices) + rng.choice(VARIANTS)
        relative = f"clips/{name}-{i:05d}.wav"
        speak(" ".join(words), voice, rng.randint(150, 200), rng.randint(30, 70), root / relative)
        rows.append({"audio": relative, "text": " ".join(words)})
    with (root / f"{name}.jsonl").open("w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)


def main(root: Path, train: int = 1200, validation: int = 100) -> None:
    from raft.testing import make_tiny_speech_model, write_toy_speech

    data = root / "data" / "speech"
    (data / "clips").mkdir(parents=True, exist_ok=True)
    if shutil.which("espeak-ng"):
        rng = random.Random(0)
        write_split(data, "train", train, TRAIN_VOICES, rng)
        write_split(data, "validation", validation, VALIDATION_VOICES, rng)
        words = DIGITS
        print(f"wrote {train + validation} spoken digit clips (espeak-ng) to {data}")
    else:
        print(
            "espeak-ng not found (apt-get install espeak-ng, or brew install espeak-ng): "
            "writing toy tone clips instead",
            file=sys.stderr,
        )
        write_toy_speech(data, train, seed=0, name="train.jsonl")
        write_toy_speech(data, validation, seed=1, name="validation.jsonl")
        words = None
    make_tiny_speech_model(root / "models" / "tiny-whisper", words=words, max_source_positions=100)
    print(f"wrote a tiny Whisper to {root / 'models' / 'tiny-whisper'}")


if __name__ == "__main__":
    main(Path(__file__).resolve().parents[1])
