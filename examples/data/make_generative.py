"""Write the generative examples' data and tiny models (nothing is downloaded).

    python examples/data/make_generative.py

- examples/data/chat/{train,validation}.jsonl: conversations {"messages": [...]} where the
  assistant names the opposite of a word, asked in several phrasings (causal LM, chat SFT).
- examples/data/translation/{train,validation}.jsonl: {"source", "target"} sentences of a
  made-up word-for-word language (seq2seq).
- examples/models/tiny-llama, examples/models/tiny-t5: randomly initialised 2-layer Llama
  and T5 models with a byte-level BPE tokenizer learned from this data. They stand in for
  a real checkpoint: point model.path at any local Llama/Qwen/Mistral or T5/BART folder.
Deterministic.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "up": "down",
    "open": "closed",
    "light": "dark",
    "early": "late",
    "happy": "sad",
    "old": "new",
    "full": "empty",
    "hard": "soft",
    "high": "low",
    "long": "short",
    "near": "far",
    "rich": "poor",
    "strong": "weak",
    "wet": "dry",
    "clean": "dirty",
    "loud": "quiet",
    "thick": "thin",
    "first": "last",
    "inside": "outside",
    "push": "pull",
    "win": "lose",
}
ASK = [
    "what is the opposite of {w}?",
    "opposite of {w}",
    "tell me the antonym of {w}",
    "give the reverse of '{w}'",
]
HELD_OUT_ASK = "which word means the opposite of {w}?"

LEXICON = {
    "the": "ta",
    "a": "u",
    "cat": "miro",
    "dog": "vash",
    "sees": "loka",
    "eats": "nemi",
    "big": "gor",
    "small": "pim",
    "fish": "sulu",
    "bird": "kiri",
    "house": "domo",
    "red": "rossa",
    "green": "vira",
    "runs": "kasa",
    "sleeps": "duma",
    "in": "en",
    "near": "pro",
    "tree": "arbo",
    "river": "flu",
}


def chat_rows(count: int, seed: int, held_out: bool) -> list[dict]:
    rng = random.Random(seed)
    words = sorted(OPPOSITES) + sorted(OPPOSITES.values())
    lookup = OPPOSITES | {v: k for k, v in OPPOSITES.items()}
    rows = []
    for _ in range(count):
        word = rng.choice(words)
        question = (HELD_OUT_ASK if held_out else rng.choice(ASK)).format(w=word)
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "Answer with one word."},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": lookup[word]},
                ]
            }
        )
    return rows


def main(root: Path) -> None:
    from raft.testing import make_tiny_generative_model, toy_translation_rows, write_jsonl

    data, models = root / "data", root / "models"
    chat = {"train": chat_rows(1200, 0, False), "validation": chat_rows(120, 1, True)}
    translation = {
        split: toy_translation_rows(count, seed, lexicon=LEXICON, lengths=(3, 7))
        for split, count, seed in (("train", 1200, 2), ("validation", 120, 3))
    }
    for split in ("train", "validation"):
        write_jsonl(chat[split], data / "chat" / f"{split}.jsonl")
        write_jsonl(translation[split], data / "translation" / f"{split}.jsonl")

    corpus = [m["content"] for row in chat["train"] for m in row["messages"]]
    corpus += [text for row in translation["train"] for text in (row["source"], row["target"])]
    make_tiny_generative_model(models / "tiny-llama", "causal_lm", corpus=corpus)
    make_tiny_generative_model(models / "tiny-t5", "seq2seq", corpus=corpus)
    print(f"wrote {data}/chat, {data}/translation, {models}/tiny-llama, {models}/tiny-t5")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
