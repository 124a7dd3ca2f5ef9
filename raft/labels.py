"""Class labels: the mapping between what the data says and the ids a model predicts.

Pure: no Ray import. The mapping is saved with the model (``config.json``'s ``id2label``
and ``labels.json``) so that predictions come back in the user's words.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class LabelMap:
    """Ordered class names; a class's id is its index."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.names) < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {list(self.names)}")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"class names repeat: {list(self.names)}")

    @property
    def num_labels(self) -> int:
        return len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def encode(self, values: Iterable[Any]) -> list[int]:
        """Map raw label values (class names, or integer ids) to ids; unknown ones raise.
        Where no class name is an integer, an integer is the id of the class at that index
        (data that stores ids, named by task.labels: a Hugging Face dataset's ClassLabel)."""
        lookup = self.label2id
        ids = []
        for value in values:
            key = _as_key(value)
            if key in lookup:
                ids.append(lookup[key])
            elif (index := id_of(key, self.names)) is not None:
                ids.append(index)
            else:
                raise ValueError(f"label {value!r} is not one of the classes {list(self.names)}")
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.names[int(i)] for i in ids]

    def save(self, directory: str | Path) -> None:
        Path(directory, LABELS_FILE).write_text(json.dumps({"labels": list(self.names)}, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> LabelMap:
        return cls(tuple(json.loads(Path(directory, LABELS_FILE).read_text())["labels"]))


def _as_key(value: Any) -> str:
    # Integer-like labels (1, 1.0, "1") all name class "1"; bools are refused as ambiguous.
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "item"):  # numpy scalar
        return _as_key(value.item())
    return str(value)


def infer_label_map(observed: Sequence[Any], declared: Sequence[str] | None = None) -> LabelMap:
    """Build the class list from the labels seen in the training data.

    ``declared`` (the spec's ``task.labels``) fixes the order and must cover every observed
    label. Otherwise integer labels keep their numeric ids (0..max) and string labels are
    sorted, so the same data always gives the same ids.
    """
    bad = [v for v in observed if v is None or isinstance(v, bool) or _as_key(v) == ""]
    if bad:
        raise ValueError(f"labels must be class names or integer ids, found {bad[:3]!r}")
    keys = sorted({_as_key(v) for v in observed})
    if declared is not None:
        unknown = [k for k in keys if k not in set(declared) and id_of(k, declared) is None]
        if unknown:
            raise ValueError(f"the data has labels {unknown} that task.labels {list(declared)} does not list")
        return LabelMap(tuple(declared))
    if keys and all(_is_int(k) for k in keys):
        ints = sorted(int(k) for k in keys)
        if ints[0] < 0:
            raise ValueError(f"integer labels must be 0 or more, found {ints[0]}")
        return LabelMap(tuple(str(i) for i in range(max(ints[-1] + 1, 2))))
    return LabelMap(tuple(keys))


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def id_of(key: str, names: Sequence[str]) -> int | None:
    """An integer label's class id when ``names`` name integer ids: when no name is itself
    an integer (else 3 could be the class named "3" or the fourth class), and it is in range."""
    if not _is_int(key) or any(_is_int(name) for name in names):
        return None
    index = int(key)
    return index if 0 <= index < len(names) else None
