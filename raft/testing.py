"""Tiny models and toy data for tests and benchmarks: built locally, never downloaded.

A tiny model is a real architecture with a few thousand parameters, saved with
``save_pretrained`` so that raft loads it through the same ``from_pretrained`` path a
user's model takes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from raft import registry

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# A learnable toy sentiment task: the label is carried by one cue word among fillers.
CUES = {
    "positive": ["good", "great", "fine", "happy", "love"],
    "negative": ["bad", "awful", "poor", "sad", "hate"],
}
FILLERS = [
    "the",
    "a",
    "this",
    "that",
    "movie",
    "film",
    "plot",
    "actor",
    "scene",
    "story",
    "was",
    "is",
    "very",
    "really",
    "quite",
    "so",
    "it",
]


def toy_vocabulary() -> list[str]:
    words = sorted({w for cue in CUES.values() for w in cue} | set(FILLERS))
    return SPECIAL_TOKENS + words


def make_tiny_model(directory: str | Path, task_name: str = "sequence_classification", **overrides) -> Path:
    """Save a tiny model of ``task_name``'s family (weights + tokenizer) to ``directory``."""
    from transformers import AutoModel, BertTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = toy_vocabulary()
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True)
    config = registry.get_task(task_name).tiny_config(vocab_size=len(vocab), **overrides)
    import torch

    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def toy_sentiment_rows(count: int, seed: int = 0, label_type: str = "str") -> list[dict]:
    """Rows {"text", "label"}: a cue word decides the label, fillers are noise."""
    rng = random.Random(seed)
    names = sorted(CUES)
    rows = []
    for _ in range(count):
        label = rng.choice(names)
        words = [rng.choice(FILLERS) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randint(0, len(words)), rng.choice(CUES[label]))
        rows.append({"text": " ".join(words), "label": label if label_type == "str" else names.index(label)})
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def toy_ner_rows(count: int, seed: int = 0) -> list[dict]:
    """Rows {"tokens", "tags"}: cue words are entities (B-POS / B-NEG), fillers are O."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        tokens = [rng.choice(FILLERS) for _ in range(rng.randint(3, 8))]
        tags = ["O"] * len(tokens)
        for _ in range(rng.randint(1, 2)):
            kind = rng.choice(sorted(CUES))
            at = rng.randint(0, len(tokens))
            tokens.insert(at, rng.choice(CUES[kind]))
            tags.insert(at, "B-POS" if kind == "positive" else "B-NEG")
        rows.append({"tokens": tokens, "tags": tags})
    return rows


# -- generative families: a byte-level BPE tokenizer trained here, in a second -----------
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}</s>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
BYTE_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]


def make_byte_tokenizer(
    corpus: list[str] | None = None, vocab_size: int = 700, specials: list[str] | None = None
):
    """A byte-level BPE tokenizer (GPT-2/Llama style) trained on ``corpus`` (default: the
    toy vocabulary), with pad/bos/eos tokens and a small chat template. ``specials``
    reorders the special tokens (their ids are their positions)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if corpus is None:
        words = toy_vocabulary()[len(SPECIAL_TOKENS) :] + sorted(CUES) + list(TOY_TRANSLATION.values())
        words += ["review", "sentiment", "translate", "answer", "in", "one", "word"]
        corpus = word_corpus(words)
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials or BYTE_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=BYTE_SPECIALS[4:],
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def word_corpus(words: list[str]) -> list[str]:
    """Texts to learn BPE merges from: the words in a line, each with and without a leading
    space (how they appear mid-sentence and at the start)."""
    return [" ".join(words), *(f" {w}" for w in words), *words]


def tiny_config_for(task_name: str, tokenizer, **overrides):
    """The family's tiny config, sized to ``tokenizer`` and using its special token ids."""
    return registry.get_task(task_name).tiny_config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **overrides,
    )


def make_tiny_generative_model(
    directory: str | Path, task_name: str, corpus: list[str] | None = None, **overrides
) -> Path:
    """Save a tiny causal LM (Llama) or seq2seq (T5) model and a byte-level tokenizer
    (its merges learned from ``corpus``, default: the toy vocabulary)."""
    import torch
    import transformers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = make_byte_tokenizer(corpus)
    task = registry.get_task(task_name)
    config = tiny_config_for(task_name, tokenizer, **overrides)
    torch.manual_seed(0)
    model = getattr(transformers, task.auto_class).from_config(config)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


# Toy "translation": each word maps to a made-up word; a sentence maps word by word.
TOY_TRANSLATION = {
    "good": "bon",
    "bad": "mal",
    "movie": "filmo",
    "film": "filmo",
    "the": "le",
    "was": "eta",
    "very": "tres",
    "happy": "gai",
    "sad": "trist",
    "story": "histo",
}


def toy_translation_rows(
    count: int, seed: int = 0, lexicon: dict[str, str] | None = None, lengths: tuple[int, int] = (2, 5)
) -> list[dict]:
    """Rows {"source", "target"}: a sentence of toy words (``lengths`` words, inclusive) and
    its word-by-word translation through ``lexicon`` (default: TOY_TRANSLATION)."""
    lexicon = lexicon or TOY_TRANSLATION
    rng = random.Random(seed)
    words = sorted(lexicon)
    rows = []
    for _ in range(count):
        sentence = [rng.choice(words) for _ in range(rng.randint(*lengths))]
        rows.append({"source": " ".join(sentence), "target": " ".join(lexicon[w] for w in sentence)})
    return rows


def toy_sft_rows(count: int, seed: int = 0, chat: bool = False) -> list[dict]:
    """Rows whose answer is the sentiment of a sentence: {"prompt", "completion"}, or a
    {"messages": [...]} conversation with a system turn when ``chat``."""
    rows = []
    for row in toy_sentiment_rows(count, seed=seed):
        prompt, answer = f"review: {row['text']} sentiment:", f" {row['label']}"
        if chat:
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": "answer in one word"},
                        {"role": "user", "content": row["text"]},
                        {"role": "assistant", "content": row["label"]},
                    ]
                }
            )
        else:
            rows.append({"prompt": prompt, "completion": answer})
    return rows


def toy_text_rows(count: int, seed: int = 0) -> list[dict]:
    """Rows {"text"}: toy reviews, each word followed by its toy translation (a pattern a
    tiny causal LM learns within a few epochs)."""
    rng = random.Random(seed)
    words = sorted(TOY_TRANSLATION)
    return [
        {"text": " ".join(f"{w} {TOY_TRANSLATION[w]}" for w in rng.choices(words, k=rng.randint(3, 10)))}
        for _ in range(count)
    ]


# -- vision: a tiny ViT and a toy image folder ----------------------------------------------
def make_tiny_vision_model(directory: str | Path, **overrides) -> Path:
    """Save a tiny ViT backbone (the head is added at load, sized to the classes) and its
    image processor (32×32, ImageNet-style normalization)."""
    import torch
    from transformers import AutoModel, ViTImageProcessor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = registry.get_task("image_classification").tiny_config(**overrides)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(directory, safe_serialization=True)
    ViTImageProcessor(size={"height": config.image_size, "width": config.image_size}).save_pretrained(
        directory
    )
    return directory


TOY_IMAGE_CLASSES = ("horizontal", "vertical")


def toy_image(kind: str, rng: random.Random, size: int = 24):
    """A PIL image of noisy stripes: the stripe direction is the class."""
    import numpy as np
    from PIL import Image

    period = rng.choice([4, 6, 8])
    phase = rng.randrange(period)
    lines = ((np.arange(size) + phase) % period < period // 2).astype(np.float32)
    pattern = (
        np.tile(lines[:, None], (1, size)) if kind == "horizontal" else np.tile(lines[None, :], (size, 1))
    )
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 0.15, (size, size))
    gray = np.clip(pattern * 0.8 + 0.1 + noise, 0, 1)
    color = np.array([rng.uniform(0.5, 1.0) for _ in range(3)], dtype=np.float32)
    return Image.fromarray((gray[:, :, None] * color * 255).astype(np.uint8), mode="RGB")


def write_toy_image_folder(root: str | Path, count: int, seed: int = 0) -> Path:
    """``root/<class>/<n>.png`` for ``count`` toy images split over the stripe classes."""
    rng = random.Random(seed)
    root = Path(root)
    for i in range(count):
        kind = TOY_IMAGE_CLASSES[i % len(TOY_IMAGE_CLASSES)]
        (root / kind).mkdir(parents=True, exist_ok=True)
        toy_image(kind, rng).save(root / kind / f"{i:05d}.png")
    return root


# -- speech: a tiny Whisper and toy "spoken" clips ------------------------------------------
# Each toy word is a tone; a clip says one to three words, with short pauses between them.
TOY_TONES = {"low": 300.0, "mid": 700.0, "high": 1500.0, "top": 3000.0}
TOY_SPEECH_RATES = (16000, 8000, 22050)  # files at several rates: raft resamples to 16 kHz


def make_tiny_speech_model(directory: str | Path, words: list[str] | None = None, **overrides) -> Path:
    """Save a tiny Whisper (a 1 s window unless ``max_source_positions`` says otherwise: 50
    positions a second), its log-mel feature extractor and a byte-level tokenizer that
    knows ``words`` (default: the toy tone words)."""
    import torch
    from transformers import AutoModelForSpeechSeq2Seq, WhisperFeatureExtractor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    words = list(words or TOY_TONES)
    tokenizer = make_byte_tokenizer(word_corpus(words), vocab_size=300)
    overrides.setdefault("decoder_start_token_id", tokenizer.bos_token_id)
    config = tiny_config_for("speech_recognition", tokenizer, **overrides)
    torch.manual_seed(0)
    AutoModelForSpeechSeq2Seq.from_config(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    window = config.max_source_positions * 2 // 100  # seconds at a 10 ms hop
    WhisperFeatureExtractor(
        feature_size=config.num_mel_bins, sampling_rate=16000, hop_length=160, chunk_length=window, n_fft=400
    ).save_pretrained(directory)
    return directory


def toy_clip(words: list[str], rate: int = 16000, rng: random.Random | None = None):
    """float32 samples of ``words`` as tones of 0.22-0.26 s each, with pauses and noise."""
    import numpy as np

    rng = rng or random.Random(0)
    parts = []
    for word in words:
        t = np.arange(int(rng.uniform(0.22, 0.26) * rate)) / rate
        parts.append(0.5 * np.sin(2 * np.pi * TOY_TONES[word] * t + rng.uniform(0, 6.28)))
        parts.append(np.zeros(int(0.03 * rate)))
    samples = np.concatenate(parts)
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 0.01, samples.shape)
    return (samples + noise).astype(np.float32)


def toy_speech_rows(count: int, seed: int = 0) -> list[dict]:
    """Rows {"audio": encoded clip, "text": transcript}: wav and flac in turn, at 16, 8 and
    22.05 kHz in turn."""
    import io

    import soundfile

    rng = random.Random(seed)
    rows = []
    for i in range(count):
        words = [rng.choice(list(TOY_TONES)) for _ in range(rng.randint(1, 3))]
        rate = TOY_SPEECH_RATES[i % len(TOY_SPEECH_RATES)]
        buffer = io.BytesIO()
        soundfile.write(buffer, toy_clip(words, rate, rng), rate, format="FLAC" if i % 2 else "WAV")
        rows.append({"audio": buffer.getvalue(), "text": " ".join(words)})
    return rows


def write_toy_speech(root: str | Path, count: int, seed: int = 0, name: str = "data.jsonl") -> Path:
    """``root/clips/<n>.wav|flac`` (``toy_speech_rows``) and ``root/<name>``, a jsonl of
    {"audio": relative path, "text": transcript}."""
    root = Path(root)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, row in enumerate(toy_speech_rows(count, seed)):
        relative = f"clips/{seed}-{i:05d}.{'flac' if i % 2 else 'wav'}"
        (root / relative).write_bytes(row["audio"])
        rows.append({"audio": relative, "text": row["text"]})
    return write_jsonl(rows, root / name)


# -- image-text: a tiny CLIP and captioned toy images ----------------------------------------
TOY_COLORS = {
    "red": (0.9, 0.15, 0.15),
    "green": (0.15, 0.8, 0.2),
    "blue": (0.2, 0.3, 0.9),
    "yellow": (0.9, 0.85, 0.2),
}
TOY_CAPTIONS = ("a photo of {} stripes", "{} lines", "a picture with {} bands")
# CLIP pools its text tower at the EOS token; an EOS id of 2 would select CLIP's legacy
# pooling (at the highest token id), so the tiny CLIP tokenizer puts EOS at id 3.
CLIP_SPECIALS = ["<pad>", "<s>", "<unk>", "</s>", *BYTE_SPECIALS[4:]]


def make_tiny_clip_model(directory: str | Path, words: list[str] | None = None, **overrides) -> Path:
    """Save a tiny CLIP (two 2-layer towers, 32×32 images), its image processor and a
    byte-level tokenizer that knows ``words`` (default: the toy caption words)."""
    import torch
    from transformers import AutoModel, CLIPImageProcessorPil

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if words is None:
        words = [w for t in TOY_CAPTIONS for w in t.replace("{}", "").split()] + list(TOY_COLORS)
        words += list(TOY_IMAGE_CLASSES)
    tokenizer = make_byte_tokenizer(word_corpus(words), vocab_size=300, specials=CLIP_SPECIALS)
    config = tiny_config_for("image_text", tokenizer, **overrides)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    size = config.vision_config.image_size
    CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    ).save_pretrained(directory)
    return directory


def toy_captioned_image(color: str, direction: str, rng: random.Random):
    """Noisy stripes (``direction``) tinted ``color``."""
    import numpy as np
    from PIL import Image

    gray = np.asarray(toy_image(direction, rng), dtype=np.float32).mean(axis=-1, keepdims=True) / 255
    tint = np.array(TOY_COLORS[color]) * rng.uniform(0.8, 1.0)
    return Image.fromarray((np.clip(gray * tint * 1.6, 0, 1) * 255).astype(np.uint8), mode="RGB")


def toy_caption_rows(count: int, seed: int = 0) -> list[dict]:
    """Rows {"image": PNG bytes, "caption", "label": "<color> <direction>"}; the caption
    names the label in one of three phrasings."""
    import io

    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        color, direction = rng.choice(list(TOY_COLORS)), rng.choice(TOY_IMAGE_CLASSES)
        buffer = io.BytesIO()
        toy_captioned_image(color, direction, rng).save(buffer, format="PNG")
        label = f"{color} {direction}"
        rows.append(
            {"image": buffer.getvalue(), "caption": rng.choice(TOY_CAPTIONS).format(label), "label": label}
        )
    return rows


def write_toy_captions(root: str | Path, count: int, seed: int = 0, name: str = "data.jsonl") -> Path:
    """``root/images/<n>.png`` and ``root/<name>``: a jsonl of {"image": relative path,
    "caption", "label"}."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, row in enumerate(toy_caption_rows(count, seed)):
        relative = f"images/{seed}-{i:05d}.png"
        (root / relative).write_bytes(row.pop("image"))
        rows.append({"image": relative, **row})
    return write_jsonl(rows, root / name)
