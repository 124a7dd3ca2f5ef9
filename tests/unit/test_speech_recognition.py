"""Speech recognition: decoding and resampling audio, log-mel features, transcript labels,
bad clips, WER/CER, and the model checks."""

from __future__ import annotations

import base64
import io
import json
import random

import jiwer
import numpy as np
import pytest
import soundfile
import torch

from raft.evaluate import load_exported
from raft.spec import SpecError, validate
from raft.tasks.base import EvalContext
from raft.tasks.speech_recognition import (
    SpeechRecognition,
    SpeechRecognitionSpec,
    error_counts,
    error_rates,
    read_audio,
    resample,
    transcript_ids,
)
from raft.testing import (
    make_byte_tokenizer,
    make_tiny_generative_model,
    make_tiny_speech_model,
    toy_clip,
    write_toy_speech,
)
from tests.helpers import export_tiny

TASK = SpeechRecognition()


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    return str(make_tiny_speech_model(tmp_path_factory.mktemp("whisper")))


def encoded(samples: np.ndarray, rate: int, format: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=format, subtype=subtype)
    return buffer.getvalue()


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def test_resampling_keeps_the_pitch_and_the_duration():
    t = np.arange(8000) / 8000
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)  # 1 s of 1 kHz at 8 kHz
    up = resample(tone, 8000, 16000)
    assert len(up) == 16000 and up.dtype == np.float32
    assert peak_hz(up, 16000) == pytest.approx(1000, abs=2)
    down = resample(resample(tone, 8000, 22050), 22050, 16000)
    assert len(down) == 16000 and peak_hz(down, 16000) == pytest.approx(1000, abs=2)
    assert resample(tone, 8000, 8000) is tone


def test_wav_and_flac_decode_to_mono_float():
    rng = np.random.default_rng(0)
    stereo = rng.uniform(-0.5, 0.5, (1000, 2)).astype(np.float32)
    for format in ("WAV", "FLAC"):
        samples, rate = read_audio(encoded(stereo, 22050, format))
        assert rate == 22050 and samples.shape == (1000,)
        assert np.allclose(samples, stereo.mean(axis=1), atol=1e-3)  # FLAC is 16-bit here
    decoded = {"array": [0.0, 0.5, -0.5], "sampling_rate": 16000}  # HF's Audio feature
    assert read_audio(decoded)[1] == 16000


def test_bad_clips_and_transcripts_are_named(whisper, tmp_path):
    spec = SpeechRecognitionSpec()
    good = encoded(toy_clip(["low"]), 16000)
    assert TASK.row_problem({"audio": good, "text": "low"}, spec, whisper) is None
    problem = TASK.row_problem({"audio": b"RIFF....WAVEfmt nothing", "text": "low"}, spec, whisper)
    assert problem.startswith("column 'audio': cannot be read as audio")
    empty = encoded(np.zeros(0, dtype=np.float32), 16000)
    assert TASK.row_problem({"audio": empty, "text": "low"}, spec, whisper) == (
        "column 'audio': the audio is empty (0 samples)"
    )
    long = encoded(np.zeros(32000, dtype=np.float32), 16000)  # 2 s; the tiny model hears 1 s
    assert "the audio is 2.0 s, longer than 1 s" in TASK.row_problem(
        {"audio": long, "text": "x"}, spec, whisper
    )
    longer = spec.model_copy(update={"max_audio_seconds": 3.0})
    assert TASK.row_problem({"audio": long, "text": "x"}, longer, whisper) is None
    assert TASK.row_problem({"audio": good, "text": " "}, spec, whisper) == "column 'text' is blank"
    missing = TASK.row_problem({"audio": "clips/none.wav", "text": "low"}, spec, whisper)
    assert missing.startswith("column 'audio': cannot be read as audio") and "none.wav" in missing


def test_relative_paths_resolve_against_the_data_file(whisper, tmp_path):
    data = write_toy_speech(tmp_path / "speech", 6, seed=3)
    rows = [json.loads(line) | {"path": str(data)} for line in data.read_text().splitlines()]
    assert {row["audio"].rsplit(".", 1)[1] for row in rows} == {"wav", "flac"}
    assert all(TASK.row_problem(row, SpeechRecognitionSpec(), whisper) is None for row in rows)


def test_features_are_the_extractors_log_mels_at_its_rate(whisper):
    from transformers import AutoFeatureExtractor

    rng = random.Random(0)
    clip = toy_clip(["mid", "top"], 16000, rng)
    # The same words recorded at 8 kHz come out closer to it than other words do.
    slow = toy_clip(["mid", "top"], 8000, random.Random(0))
    other = toy_clip(["low", "high"], 16000, random.Random(0))
    batch = {
        "audio": np.array(
            [encoded(clip, 16000, subtype="FLOAT"), encoded(slow, 8000, "FLAC"), encoded(other, 16000)],
            dtype=object,
        ),
        "text": np.array(["mid top", "mid top", "low high"], dtype=object),
    }
    features = TASK.preprocess(batch, SpeechRecognitionSpec(), whisper, None)
    mels = features["input_features"]
    assert mels.shape == (3, 80, 100) and mels.dtype == np.float32
    expected = AutoFeatureExtractor.from_pretrained(whisper)(clip, sampling_rate=16000, return_tensors="np")
    assert np.allclose(mels[0], expected["input_features"][0], atol=1e-5)
    # The loudest mel band of each frame of the first 0.5 s follows the tones being "said".
    loudest = mels[:, :, :50].argmax(axis=1)
    same, different = (loudest[0] == loudest[1]).mean(), (loudest[0] == loudest[2]).mean()
    assert same > 0.8 and different < 0.3, (same, different)
    labels = features["labels"][0]
    scored = labels[labels != -100].tolist()
    from transformers import AutoTokenizer

    words = AutoTokenizer.from_pretrained(whisper)
    assert scored[-1] == words.eos_token_id and words.decode(scored[:-1]).strip() == "mid top"


def test_transcript_labels_drop_a_leading_start_token_and_keep_eos():
    tokenizer = make_byte_tokenizer()
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    plain = transcript_ids(tokenizer, ["good movie"], 16, start=bos)
    assert plain[0][-1] == eos and plain[0][0] != bos
    # A tokenizer that writes the start token (Whisper's) has it removed.
    prefixed = transcript_ids(tokenizer, ["<s>good movie"], 16, start=bos)
    assert prefixed == plain
    cut = transcript_ids(tokenizer, ["good movie " * 20], 8, start=bos)
    assert len(cut[0]) == 8 and cut[0][-1] == eos


def test_word_and_character_error_rates_match_jiwer():
    references = ["the cat sat", "on the mat", "hello world"]
    predictions = ["the cat sat down", "on mat", "Hello, World!"]
    stats = error_counts(predictions, references, normalize=True)
    rates = error_rates(stats)
    normalized = ["the cat sat down", "on mat", "hello world"]
    assert rates["wer"] == pytest.approx(jiwer.wer(references, normalized))
    assert rates["cer"] == pytest.approx(jiwer.cer(references, normalized))
    assert rates["exact_match"] == pytest.approx(1 / 3)
    # Sums of per-batch statistics give the corpus rates (as across workers).
    halves = error_counts(predictions[:1], references[:1]) + error_counts(predictions[1:], references[1:])
    assert np.array_equal(halves, stats)
    # Without normalization, case and punctuation count as errors.
    assert error_rates(error_counts(predictions, references, normalize=False))["wer"] > rates["wer"]
    # An empty reference: every predicted word is an insertion.
    assert error_counts(["extra words"], [""]).tolist()[:2] == [2, 0]


def test_eval_stats_transcribe_with_the_model(whisper):
    spec = SpeechRecognitionSpec(generation={"max_new_tokens": 6})
    batch = {
        "audio": np.array([encoded(toy_clip(["low"]), 16000)], dtype=object),
        "text": np.array(["low"], dtype=object),
    }
    tensors = TASK.collate(TASK.preprocess(batch, spec, whisper, None))
    model = TASK.build_model(whisper, spec, None).eval()
    with torch.no_grad():
        outputs = model(**tensors)
    stats = TASK.eval_stats(outputs, tensors, None, EvalContext(model=model, spec=spec, model_path=whisper))
    assert stats[1] == 1 and stats[4] == 1  # one reference word, one row
    assert stats[0] >= 1  # an untrained model gets it wrong
    off = spec.model_copy(update={"generate_metrics": False})
    assert not TASK.eval_stats(
        outputs, tensors, None, EvalContext(model=model, spec=off, model_path=whisper)
    ).any()


def test_model_checks(whisper, tmp_path):
    TASK.check_model(SpeechRecognitionSpec(), whisper)
    t5 = str(make_tiny_generative_model(tmp_path / "t5", "seq2seq"))
    with pytest.raises(ValueError, match="needs a speech encoder-decoder.*'t5'"):
        TASK.check_model(SpeechRecognitionSpec(), t5)
    from transformers import WhisperFeatureExtractor

    mismatched = make_tiny_speech_model(tmp_path / "mismatched")
    WhisperFeatureExtractor(feature_size=80, chunk_length=2).save_pretrained(mismatched)
    with pytest.raises(ValueError, match="makes 200 frames per clip but the encoder takes 100"):
        TASK.check_model(SpeechRecognitionSpec(), str(mismatched))
    # A language needs a tokenizer with Whisper's language prefix; the tiny one has none.
    with pytest.raises(ValueError, match="task.language 'en': the tokenizer of .* has no language prefix"):
        TASK.check_model(SpeechRecognitionSpec(language="en"), whisper)


def test_spec_refuses_virtual_tokens_and_checks_freeze_parts(whisper):
    base = {"model": {"path": whisper}, "task": {"type": "speech_recognition"}, "data": {"train": "x.jsonl"}}
    with pytest.raises(SpecError, match="prompt_tuning cannot train speech_recognition.*log-mel"):
        validate(base | {"technique": {"type": "prompt_tuning"}})
    with pytest.raises(
        SpecError, match=r"technique.parts: \['vision'\] are not parts of a speech_recognition"
    ):
        validate(base | {"technique": {"type": "freeze", "parts": ["vision"]}})
    spec = validate(base | {"technique": {"type": "freeze", "embeddings": False, "parts": ["encoder"]}})
    from raft.techniques.freeze import frozen_parameter_names

    model = TASK.build_model(whisper, spec.task, None)
    frozen = frozen_parameter_names(model, spec.technique, TASK)
    encoder = {n for n, _ in model.named_parameters() if ".encoder." in f".{n}"}
    assert frozen == encoder and encoder


# -- serving ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served_whisper(whisper, tmp_path_factory):
    root = tmp_path_factory.mktemp("served-whisper")
    task = {"type": "speech_recognition", "generation": {"max_new_tokens": 6}}
    return str(export_tiny(whisper, root, task))


def test_serving_transcribes_as_model_generate_does(served_whisper):
    from transformers import AutoFeatureExtractor, AutoTokenizer

    slow = encoded(toy_clip(["low", "mid"], 8000), 8000)  # resampled to 16 kHz
    flac = encoded(toy_clip(["top"], 16000, random.Random(1)), 16000, "FLAC")
    items = [base64.b64encode(slow).decode(), flac]  # base64 text, and the bytes of an upload
    spec, model, _ = load_exported(served_whisper)
    decoded = [TASK.request_input(item, spec.task) for item in items]
    assert [rate for _, rate in decoded] == [8000, 16000]
    answers = TASK.predict(model, served_whisper, spec.task, decoded)

    clips = [resample(*soundfile.read(io.BytesIO(data), dtype="float32"), 16000) for data in (slow, flac)]
    features = AutoFeatureExtractor.from_pretrained(served_whisper)(
        clips, sampling_rate=16000, return_tensors="pt"
    )["input_features"]
    tokenizer = AutoTokenizer.from_pretrained(served_whisper)
    with torch.no_grad():
        output = model.generate(input_features=features, max_new_tokens=6, do_sample=False, num_beams=1)
    expected = [text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]
    assert answers == [{"text": text} for text in expected]
    assert all(expected)

    options = TASK.request_options({"max_new_tokens": 1}, spec.task)
    short = TASK.predict(model, served_whisper, spec.task, decoded, **options)
    for one, full in zip(short, answers, strict=True):
        assert one["text"] and full["text"].startswith(one["text"]) and len(one["text"]) < len(full["text"])
    with pytest.raises(ValueError, match=r"parameters\.language: Extra inputs are not permitted"):
        TASK.request_options({"language": "en"}, spec.task)


def test_bad_audio_is_the_clients_error(served_whisper):
    from raft.serving import input_problems

    spec, model, _ = load_exported(served_whisper)
    assert TASK.serves and TASK.media_inputs
    good = encoded(toy_clip(["low"]), 16000)
    two_seconds = encoded(np.zeros(32000, dtype=np.float32), 16000)
    items = [
        good,
        "not base64!",
        base64.b64encode(b"RIFF....WAVEfmt nothing").decode(),
        base64.b64encode(encoded(np.zeros(0, dtype=np.float32), 16000)).decode(),
        ["a", "list"],
    ]
    decoded, problems = input_problems(TASK, spec.task, items)
    assert len(decoded) == 1
    assert problems[0] == "inputs[1]: give the audio as base64 text (or a data: URL); this is not base64"
    assert problems[1].startswith("inputs[2]: the audio does not decode: ")
    assert problems[2:] == [
        "inputs[3]: the audio is empty (0 samples)",
        "inputs[4]: give the audio as base64 text (or upload it as a file)",
    ]
    # A clip longer than task.max_audio_seconds, or than the model's window (1 s here, read
    # from the served export), is refused with its request, before any batch runs.
    short_limit = spec.task.model_copy(update={"max_audio_seconds": 1.5})
    with pytest.raises(ValueError, match=r"the audio is 2\.0 s, longer than 1\.5 s"):
        TASK.request_input(two_seconds, short_limit)
    with pytest.raises(ValueError, match=r"the audio is 2\.0 s, longer than 1 s"):
        TASK.request_input(two_seconds, spec.task, str(served_whisper))
    _, problems = input_problems(TASK, spec.task, [two_seconds], str(served_whisper))
    assert problems == [
        "inputs[0]: the audio is 2.0 s, longer than 1 s (the longest clip this model takes); split the clip"
    ]
