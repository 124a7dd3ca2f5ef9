"""Write the demo's topic-classification data: short news-style sentences in 4 topics.

    python examples/data/make_topics.py            # writes examples/data/topics/{train,validation}.jsonl

Sentences are composed from per-topic subjects, verbs and objects with shared filler, so
the label is carried by word meaning rather than by one fixed keyword. Deterministic.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

TOPICS = {
    "sports": {
        "subjects": [
            "the striker",
            "the home team",
            "the goalkeeper",
            "our coach",
            "the sprinter",
            "the champions",
            "the rookie pitcher",
            "the tennis star",
            "the defender",
            "the cyclist",
        ],
        "verbs": [
            "scored",
            "won",
            "trained for",
            "lost",
            "celebrated",
            "qualified for",
            "missed",
            "defended",
        ],
        "objects": [
            "the final match",
            "a penalty kick",
            "the league title",
            "the world cup",
            "a gold medal",
            "the playoff game",
            "the marathon",
            "the championship",
            "a late goal",
            "the derby",
        ],
    },
    "technology": {
        "subjects": [
            "the startup",
            "the software team",
            "the chip maker",
            "our engineers",
            "the app developer",
            "the cloud provider",
            "the robotics lab",
            "the phone company",
            "the hackers",
            "the AI researchers",
        ],
        "verbs": [
            "released",
            "patched",
            "launched",
            "upgraded",
            "debugged",
            "open sourced",
            "shipped",
            "encrypted",
        ],
        "objects": [
            "a new smartphone",
            "the operating system",
            "a faster processor",
            "the mobile app",
            "a machine learning model",
            "the database server",
            "a security update",
            "the web browser",
            "the laptop",
            "a programming language",
        ],
    },
    "cooking": {
        "subjects": [
            "the chef",
            "my grandmother",
            "the baker",
            "the restaurant",
            "the cooking class",
            "our kitchen staff",
            "the food blogger",
            "the pastry cook",
            "the home cook",
            "the caterer",
        ],
        "verbs": ["baked", "roasted", "seasoned", "served", "simmered", "grilled", "prepared", "tasted"],
        "objects": [
            "a chocolate cake",
            "the tomato soup",
            "fresh bread",
            "the garlic chicken",
            "a spicy curry",
            "the vegetable stew",
            "homemade pasta",
            "the apple pie",
            "a salmon fillet",
            "the risotto",
        ],
    },
    "weather": {
        "subjects": [
            "the storm",
            "a cold front",
            "the forecast",
            "heavy clouds",
            "the hurricane",
            "a heat wave",
            "the blizzard",
            "strong winds",
            "the meteorologists",
            "a thunderstorm",
        ],
        "verbs": [
            "brought",
            "predicted",
            "caused",
            "delivered",
            "warned of",
            "dropped",
            "swept in with",
            "ended",
        ],
        "objects": [
            "heavy rain",
            "freezing temperatures",
            "deep snow",
            "a sunny afternoon",
            "thick fog",
            "record humidity",
            "hail and lightning",
            "a dry spell",
            "flooding downtown",
            "icy roads",
        ],
    },
}
PREFIXES = ["", "", "yesterday ", "this morning ", "on sunday ", "last night ", "reports say ", "once again "]
SUFFIXES = ["", "", " today", " this week", " across the region", " before noon", " as expected", " again"]


def sentence(rng: random.Random, topic: str) -> str:
    parts = TOPICS[topic]
    text = (
        f"{rng.choice(PREFIXES)}{rng.choice(parts['subjects'])} {rng.choice(parts['verbs'])} "
        f"{rng.choice(parts['objects'])}{rng.choice(SUFFIXES)}"
    )
    return text[0].upper() + text[1:] + "."


def rows(count: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    names = sorted(TOPICS)
    return [
        {"text": sentence(rng, topic), "label": topic} for topic in (rng.choice(names) for _ in range(count))
    ]


def main(out_dir: str = str(Path(__file__).parent / "topics")) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, count, seed in (("train", 2000, 1), ("validation", 400, 2)):
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows(count, seed)))
        print(f"wrote {count} rows to {path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
