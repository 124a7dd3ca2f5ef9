"""Write the NER example's data: short sentences tagged with people, places and organizations.

    python examples/data/make_entities.py        # writes examples/data/entities/{train,validation}.jsonl

Each row is {"tokens": [...], "tags": [...]} with BIO tags (B-PER, I-PER, B-LOC, I-LOC,
B-ORG, I-ORG, O). Names of one to three words are drawn into sentence templates, so the
model must learn multi-word entities and use context. Deterministic.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ENTITIES = {
    "PER": ["alice", "bob smith", "maria garcia", "john", "li wei", "anna maria lopez", "omar", "sara khan"],
    "LOC": ["paris", "new york", "tokyo", "rio de janeiro", "berlin", "cape town", "lima", "oslo"],
    "ORG": ["acme corp", "the united nations", "red cross", "globex", "city council", "the central bank"],
}
TEMPLATES = [
    "{PER} moved to {LOC} last year",
    "{PER} works for {ORG} in {LOC}",
    "yesterday {ORG} opened an office in {LOC}",
    "{PER} met {PER} at the {ORG} meeting",
    "the report from {ORG} was read by {PER}",
    "{PER} flew from {LOC} to {LOC} on monday",
    "people in {LOC} trust {ORG}",
    "{PER} said the weather in {LOC} was fine",
]


def make_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        tokens, tags = [], []
        for part in rng.choice(TEMPLATES).split():
            if part.startswith("{"):
                kind = part[1:-1]
                words = rng.choice(ENTITIES[kind]).split()
                tokens += words
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
            else:
                tokens.append(part)
                tags.append("O")
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, count, seed in (("train", 1200, 0), ("validation", 240, 1)):
        rows = make_rows(count, seed)
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{out / name}.jsonl: {len(rows)} rows")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "entities")
