"""Speech recognition (Whisper style: ``AutoModelForSpeechSeq2Seq``).

Rows hold an audio column (wav/flac bytes, or a path relative to the data file) and a
transcript column. Inside Ray Data each clip is decoded with soundfile (libsndfile: no
torchaudio), mixed down to mono, resampled to the feature extractor's rate (scipy's
polyphase filter) and turned into log-mel ``input_features`` by the model's own feature
extractor; the transcript becomes decoder labels through the tokenizer (Whisper's adds its
start/language/task prefix, which the model's decoder start token then replaces). Each
evaluation transcribes every validation clip with the spec's ``generation`` settings and
scores word and character error rates (jiwer), summed exactly across workers.
"""

from __future__ import annotations

import functools
import io
import re
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt

from raft.generation import GenerationSpec, generate, generation_config
from raft.labels import LabelMap
from raft.registry import TaskSpec, register_task
from raft.serving import GenerationOptions, decode_media
from raft.sources import BAD_MEDIA, TOO_LONG, RowFault, media_type_fault, read_media, text_fault
from raft.tasks.base import EvalContext, Task, load_tokenizer, safetensors_only
from raft.tasks.seq2seq import decode_labels, pad_labels, target_ids

AUDIO_EXTENSIONS = (".wav", ".flac")
PROMPT_REASON = (
    "peft's {kind} prepends virtual tokens to a token sequence; a speech encoder takes "
    "log-mel frames, not tokens"
)
# [edits, reference words, character edits, reference characters, rows, exact rows]
SPEECH_STATS = 6


class SpeechRecognitionSpec(TaskSpec):
    type: Literal["speech_recognition"] = "speech_recognition"
    audio_column: str = Field(
        "audio", description="Column of wav/flac bytes or file paths (relative to the data file)."
    )
    text_column: str = Field("text", description="Column with the transcript.")
    language: str | None = Field(
        None, description="Whisper language of the transcripts (e.g. 'en'); sets the tokenizer prefix."
    )
    speech_task: Literal["transcribe", "translate"] = Field(
        "transcribe", description="Whisper's task token: transcribe, or translate to English."
    )
    max_audio_seconds: PositiveFloat | None = Field(
        None,
        description="Longest clip accepted (longer rows are bad rows). Default: the feature "
        "extractor's window (30 s for Whisper).",
    )
    max_target_length: PositiveInt = Field(128, description="Transcript tokens kept; longer ones are cut.")
    normalize: bool = Field(
        True, description="Score WER on lower-cased text without punctuation (both sides)."
    )
    generate_metrics: bool = Field(
        True, description="Transcribe every validation clip and score WER/CER (else loss only)."
    )
    generation: GenerationSpec = Field(
        default_factory=GenerationSpec, description="Decoding for metrics, logged samples and serving."
    )


class SpeechRecognition(Task):
    name = "speech_recognition"
    token_inputs = False
    spec_class = SpeechRecognitionSpec
    auto_class = "AutoModelForSpeechSeq2Seq"
    peft_task_type = None  # peft's SEQ_2_SEQ_LM wrapper feeds input_ids; Whisper takes features
    preprocessor_class = "AutoFeatureExtractor"
    extra_preprocessors = ("AutoTokenizer",)
    primary_metric = "wer"
    primary_mode = "min"
    model_parts = {"encoder": ["*encoder.*"], "decoder": ["*decoder.*", "proj_out.*"]}
    unsupported_techniques = {
        "prompt_tuning": PROMPT_REASON.format(kind="prompt tuning"),
        "prefix_tuning": PROMPT_REASON.format(kind="prefix tuning"),
    }

    def required_columns(self, spec: SpeechRecognitionSpec) -> list[str]:
        return [spec.audio_column, spec.text_column]

    def check_row(self, row: dict[str, Any], spec: SpeechRecognitionSpec, model_path: str) -> RowFault | None:
        # A transcript longer than max_target_length is cut (documented), not a fault.
        fault = text_fault(row[spec.text_column], spec.text_column) or media_type_fault(
            row[spec.audio_column], spec.audio_column
        )
        if fault is not None:
            return fault
        try:
            seconds = audio_seconds(row[spec.audio_column], row.get("path"))
        except Exception as error:
            return RowFault(
                BAD_MEDIA, f"column {spec.audio_column!r}: cannot be read as audio ({_short(error)})"
            )
        if seconds <= 0:
            return RowFault(BAD_MEDIA, f"column {spec.audio_column!r}: the audio is empty (0 samples)")
        longest = spec.max_audio_seconds or window_seconds(model_path)
        if seconds > longest:
            return RowFault(
                TOO_LONG,
                f"column {spec.audio_column!r}: the audio is {seconds:.1f} s, longer than "
                f"{longest:g} s (the model's window; set task.max_audio_seconds, or split the clip)",
            )
        return None

    def preprocess(
        self,
        batch: dict[str, np.ndarray],
        spec: SpeechRecognitionSpec,
        model_path: str,
        labels: LabelMap | None,
    ) -> dict[str, np.ndarray]:
        features = {"input_features": audio_features(batch, spec, model_path)}
        tokenizer = speech_tokenizer(model_path, spec.language, spec.speech_task)
        texts = [str(t) for t in batch[spec.text_column]]
        features["labels"] = pad_labels(
            transcript_ids(tokenizer, texts, spec.max_target_length, decoder_start_id(model_path)),
            spec.max_target_length,
        )
        return features

    def collate(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        tensors = {key: torch.from_numpy(np.array(value)) for key, value in batch.items()}
        if "labels" in tensors:
            scored = (tensors["labels"] != -100).sum(dim=1)
            tensors["labels"] = tensors["labels"][:, : int(scored.max().item()) or 1].contiguous()
        return tensors

    # -- model ----------------------------------------------------------------------
    def build_model(
        self,
        model_path: str,
        spec: SpeechRecognitionSpec,
        labels: LabelMap | None,
        trust_remote_code: bool = False,
        *,
        allow_pickle: bool = False,
    ) -> torch.nn.Module:
        from transformers import AutoModelForSpeechSeq2Seq

        return AutoModelForSpeechSeq2Seq.from_pretrained(
            model_path, trust_remote_code=trust_remote_code, use_safetensors=safetensors_only(allow_pickle)
        )

    def check_model(self, spec: SpeechRecognitionSpec, model_path: str) -> None:
        from transformers import AutoConfig, AutoFeatureExtractor
        from transformers.models.auto.modeling_auto import MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES

        config = AutoConfig.from_pretrained(model_path)
        if config.model_type not in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES:
            raise ValueError(
                f"task speech_recognition needs a speech encoder-decoder (Whisper); {model_path} "
                f"is a {config.model_type!r} model"
            )
        try:
            extractor = AutoFeatureExtractor.from_pretrained(model_path)
        except Exception as error:
            raise ValueError(
                f"{model_path} has no audio feature extractor (preprocessor_config.json): {_short(error)}"
            ) from None
        if spec.language:
            tokenizer = load_tokenizer(model_path)
            if not hasattr(tokenizer, "set_prefix_tokens"):
                raise ValueError(
                    f"task.language {spec.language!r}: the tokenizer of {model_path} has no "
                    "language prefix (not a Whisper tokenizer); leave task.language unset"
                )
            try:  # the prefix property is where Whisper's tokenizer checks the language
                speech_tokenizer(model_path, spec.language, spec.speech_task).prefix_tokens  # noqa: B018
            except ValueError as error:
                raise ValueError(f"task.language {spec.language!r}: {_short(error)}") from None
        frames = getattr(extractor, "nb_max_frames", None)
        positions = getattr(config, "max_source_positions", None)
        if frames and positions and frames != 2 * positions:  # Whisper's two convolutions halve it
            raise ValueError(
                f"{model_path}: the feature extractor makes {frames} frames per clip but the "
                f"encoder takes {2 * positions} (max_source_positions {positions})"
            )

    def generation_config(self, spec: SpeechRecognitionSpec, model_path: str) -> Any:
        from transformers import AutoConfig, GenerationConfig

        tokenizer = load_tokenizer(model_path)
        try:  # keep what the base model's decoding needs (Whisper's language/task token ids)
            config = GenerationConfig.from_pretrained(model_path)
            config.update(**spec.generation.generate_kwargs())
        except OSError:
            config = generation_config(spec.generation, tokenizer, AutoConfig.from_pretrained(model_path))
        if spec.language and hasattr(config, "lang_to_id"):
            config.language, config.task = spec.language, spec.speech_task
        return config

    # -- evaluation -----------------------------------------------------------------
    def empty_stats(self, labels: LabelMap | None) -> np.ndarray:
        return np.zeros(SPEECH_STATS, dtype=np.int64)

    def eval_stats(
        self,
        outputs: Any,
        batch: dict[str, torch.Tensor],
        labels: LabelMap | None,
        context: EvalContext | None = None,
    ) -> np.ndarray:
        if context is None or not context.spec.generate_metrics:
            return self.empty_stats(labels)
        spec: SpeechRecognitionSpec = context.spec
        tokenizer = speech_tokenizer(context.model_path, spec.language, spec.speech_task)
        predictions = transcribe(context, batch["input_features"])
        return error_counts(predictions, decode_labels(tokenizer, batch["labels"]), spec.normalize)

    def metrics(self, stats: np.ndarray, labels: LabelMap | None) -> dict[str, float]:
        return error_rates(stats)

    def sample_generations(self, rows: list[dict[str, Any]], context: EvalContext) -> list[dict[str, str]]:
        spec: SpeechRecognitionSpec = context.spec
        rows = rows[: spec.generation.logged_samples]
        if not rows:
            return []
        batch = {key: np.asarray([row.get(key) for row in rows], dtype=object) for key in rows[0]}
        features = torch.from_numpy(audio_features(batch, spec, context.model_path))
        outputs = transcribe(context, features)
        return [
            {
                "prompt": _describe(row.get(spec.audio_column)),
                "output": output,
                "reference": str(row[spec.text_column]),
            }
            for output, row in zip(outputs, rows, strict=True)
        ]

    # -- serving --------------------------------------------------------------------
    serves = True
    media_inputs = True
    options_model = GenerationOptions

    def request_input(
        self, item: Any, spec: SpeechRecognitionSpec, model_dir: str | None = None
    ) -> tuple[np.ndarray, int]:
        """wav/flac bytes (base64 text or an upload) → (mono float32 samples, rate)."""
        data = decode_media(item, "audio")
        try:
            samples, rate = read_audio(data)
        except Exception as error:
            raise ValueError(f"the audio does not decode: {_short(error)}") from None
        if len(samples) == 0 or rate <= 0:
            raise ValueError("the audio is empty (0 samples)")
        longest = spec.max_audio_seconds or (window_seconds(model_dir) if model_dir else None)
        problem = _too_long(len(samples) / rate, longest)
        if problem:
            raise ValueError(problem)
        return samples, rate

    @torch.no_grad()
    def predict(
        self,
        model: Any,
        model_dir: str,
        spec: SpeechRecognitionSpec,
        inputs: list[tuple[np.ndarray, int]],
        **options: Any,
    ) -> list[dict[str, str]]:
        """Each clip (from ``request_input``) → its transcript, decoded as evaluation
        decodes (``transcribe``) with the spec's ``generation`` settings overridden by
        ``options``. ``request_input`` has refused clips longer than the model's window
        (the feature extractor would cut them silently)."""
        extractor = load_feature_extractor(model_dir)
        target = extractor.sampling_rate
        clips = [resample(samples, rate, target) for samples, rate in inputs]
        features = extractor(clips, sampling_rate=target, return_tensors="pt")["input_features"]
        settings = spec.generation.model_copy(update=options)
        context = EvalContext(
            model=model, spec=spec.model_copy(update={"generation": settings}), model_path=model_dir
        )
        return [{"text": text} for text in transcribe(context, features.to(model.dtype))]

    def tiny_config(self, **overrides: Any) -> Any:
        from transformers import WhisperConfig

        settings = dict(
            vocab_size=512,
            num_mel_bins=80,
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            max_source_positions=50,  # 100 frames: a 1 s window at Whisper's 10 ms hop
            max_target_positions=64,
            begin_suppress_tokens=None,  # Whisper's defaults name ids of its 51k vocabulary
            suppress_tokens=None,
        )
        settings.update(overrides)
        settings.setdefault("decoder_start_token_id", settings.get("bos_token_id", 1))
        return WhisperConfig(**settings)


# -- audio ------------------------------------------------------------------------------
def read_audio(value: Any, data_file: Any = None) -> tuple[np.ndarray, int]:
    """(mono float32 samples, sampling rate) of a clip. HF's decoded Audio feature
    ({"array", "sampling_rate"}) is taken as is."""
    if isinstance(value, dict) and value.get("array") is not None:
        samples = np.asarray(value["array"], dtype=np.float32)
        return (samples.mean(axis=-1) if samples.ndim > 1 else samples), int(value["sampling_rate"])
    import soundfile

    samples, rate = soundfile.read(io.BytesIO(read_media(value, data_file)), dtype="float32")
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    return samples, int(rate)


def audio_seconds(value: Any, data_file: Any = None) -> float:
    """Length of a clip from its header (soundfile checks the format without decoding)."""
    if isinstance(value, dict) and value.get("array") is not None:
        return len(value["array"]) / float(value["sampling_rate"])
    import soundfile

    info = soundfile.info(io.BytesIO(read_media(value, data_file)))
    return info.frames / float(info.samplerate) if info.samplerate else 0.0


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased) from ``rate`` to ``target`` Hz."""
    if rate == target:
        return samples.astype(np.float32, copy=False)
    from math import gcd

    from scipy.signal import resample_poly

    divisor = gcd(rate, target)
    return resample_poly(samples, target // divisor, rate // divisor).astype(np.float32)


def audio_features(batch: dict[str, np.ndarray], spec: SpeechRecognitionSpec, model_path: str) -> np.ndarray:
    """Decode, resample and turn a batch of clips into (N, mel bins, frames) log-mel features."""
    extractor = load_feature_extractor(model_path)
    rate = extractor.sampling_rate
    paths = batch.get("path")
    clips = []
    for i, value in enumerate(batch[spec.audio_column]):
        samples, clip_rate = read_audio(value, None if paths is None else paths[i])
        clips.append(resample(samples, clip_rate, rate))
    return extractor(clips, sampling_rate=rate, return_tensors="np")["input_features"].astype(np.float32)


def transcribe(context: EvalContext, features: torch.Tensor) -> list[str]:
    spec: SpeechRecognitionSpec = context.spec
    extra = {}
    if spec.language and hasattr(getattr(context.model, "generation_config", None), "lang_to_id"):
        extra = {"language": spec.language, "task": spec.speech_task}
    return generate(
        context.model,
        speech_tokenizer(context.model_path, spec.language, spec.speech_task),
        spec.generation,
        input_features=features,
        decoder_only=False,
        synced=context.synced,
        **extra,
    )


def transcript_ids(tokenizer: Any, texts: list[str], max_length: int, start: int | None) -> list[list[int]]:
    """Decoder labels: the tokens of each transcript ending with EOS, at most ``max_length``.
    The model prepends its decoder start token itself (shifting labels right), so one the
    tokenizer writes (Whisper's <|startoftranscript|>) is taken off the front."""
    rows = []
    for ids in target_ids(tokenizer, texts, max_length + 1):
        if ids and ids[0] == start:
            ids = ids[1:]
        elif len(ids) > max_length:
            ids = ids[: max_length - 1] + ids[-1:]
        rows.append(ids)
    return rows


@functools.lru_cache(maxsize=4)
def load_feature_extractor(model_path: str) -> Any:
    from transformers import AutoFeatureExtractor

    return AutoFeatureExtractor.from_pretrained(model_path)


@functools.lru_cache(maxsize=4)
def speech_tokenizer(model_path: str, language: str | None, task: str) -> Any:
    """The tokenizer, with Whisper's language/task prefix set when it has one."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if language and hasattr(tokenizer, "set_prefix_tokens"):
        tokenizer.set_prefix_tokens(language=language, task=task)
    return tokenizer


@functools.lru_cache(maxsize=4)
def decoder_start_id(model_path: str) -> int | None:
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(model_path), "decoder_start_token_id", None)


@functools.lru_cache(maxsize=4)
def window_seconds(model_path: str) -> float:
    """The longest clip the model hears at once (the feature extractor's chunk length)."""
    extractor = load_feature_extractor(model_path)
    samples = getattr(extractor, "n_samples", None)
    return samples / extractor.sampling_rate if samples else float("inf")


# -- word error rate -----------------------------------------------------------------------
_PUNCTUATION = re.compile(r"[^\w\s']|_")


def normalize_text(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed (applied to both sides)."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def error_counts(predictions: list[str], references: list[str], normalize: bool = True) -> np.ndarray:
    """Additive WER/CER statistics (jiwer's alignment): summed over batches and workers,
    they give the exact corpus error rates."""
    import jiwer

    stats = np.zeros(SPEECH_STATS, dtype=np.int64)
    for prediction, reference in zip(predictions, references, strict=True):
        if normalize:
            prediction, reference = normalize_text(prediction), normalize_text(reference)
        else:
            prediction, reference = " ".join(prediction.split()), " ".join(reference.split())
        words, chars = len(reference.split()), len(reference)
        if not reference:  # jiwer refuses empty references: every predicted unit is an insertion
            stats[0] += len(prediction.split())
            stats[2] += len(prediction)
        else:
            measured = jiwer.process_words(reference, prediction or "")
            stats[0] += measured.substitutions + measured.deletions + measured.insertions
            measured = jiwer.process_characters(reference, prediction or "")
            stats[2] += measured.substitutions + measured.deletions + measured.insertions
        stats[1] += words
        stats[3] += chars
        stats[4] += 1
        stats[5] += int(prediction == reference)
    return stats


def error_rates(stats: np.ndarray) -> dict[str, float]:
    """Corpus WER and CER (edits / reference units) and the exact-match rate."""
    edits, words, char_edits, chars, rows, exact = (int(v) for v in stats)
    return {
        "wer": edits / words if words else float(edits > 0),
        "cer": char_edits / chars if chars else float(char_edits > 0),
        "exact_match": exact / rows if rows else 0.0,
    }


def _too_long(seconds: float, longest: float | None) -> str | None:
    if longest is not None and seconds > longest:
        return (
            f"the audio is {seconds:.1f} s, longer than {longest:g} s (the longest clip this "
            "model takes); split the clip"
        )
    return None


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        samples, rate = read_audio(value)
        return f"<audio {len(samples) / rate:.2f} s>"
    except Exception:
        return "<audio>"


def _short(error: Exception) -> str:
    text = re.sub(r"^Error opening <[^>]*>: ", "", str(error))  # soundfile names its buffer
    return text.splitlines()[0][:120] if text else type(error).__name__


register_task(SpeechRecognition())
