"""Speech recognition end to end: wav/flac clips at mixed sampling rates, named by a jsonl
with transcripts, decoded and resampled into log-mels inside Ray Data; a tiny Whisper on 2
Ray Train workers under ZeRO-2; WER from generated transcripts; the export transcribes
with plain transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from raft.data import prepare
from raft.evaluate import evaluate_model
from raft.sources import DataError
from raft.spec import validate
from raft.testing import make_tiny_speech_model, write_toy_speech
from raft.train import fit

pytestmark = pytest.mark.slow

TRANSCRIBE = """
import json, sys, soundfile, torch
from scipy.signal import resample_poly
from transformers import AutoFeatureExtractor, AutoModelForSpeechSeq2Seq, AutoTokenizer
model_dir, clip = sys.argv[1], sys.argv[2]
model = AutoModelForSpeechSeq2Seq.from_pretrained(model_dir).eval()
extractor, tokenizer = AutoFeatureExtractor.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
samples, rate = soundfile.read(clip, dtype="float32")
samples = resample_poly(samples, extractor.sampling_rate, rate) if rate != extractor.sampling_rate else samples
features = extractor(samples, sampling_rate=extractor.sampling_rate, return_tensors="pt")
with torch.no_grad():
    ids = model.generate(input_features=features["input_features"])  # generation_config.json
print(json.dumps(tokenizer.decode(ids[0], skip_special_tokens=True).strip()))
"""


def spec_for(model, train, validation, tmp_path, epochs=4):
    return validate(
        {
            "model": {"path": str(model)},
            "task": {"type": "speech_recognition", "generation": {"max_new_tokens": 12}},
            "technique": {"type": "full"},
            "data": {"train": str(train), "validation": str(validation)},
            "train": {
                "epochs": epochs,
                "batch_size": 8,
                "lr": 3e-3,  # decays linearly to 0: the last epoch settles (a constant
                # 3e-3 once left the last epoch worse than the one before it)
                "log_every_n_steps": 10,
            },
            "scaling": {"num_workers": 2},
            "deepspeed": {"zero_stage": 2},
            "output": {"dir": str(tmp_path / "runs")},
        }
    )


def test_whisper_learns_to_transcribe_toy_words(tmp_path):
    model = make_tiny_speech_model(tmp_path / "whisper")
    train = write_toy_speech(tmp_path / "speech", 480, seed=0, name="train.jsonl")
    validation = write_toy_speech(tmp_path / "speech", 40, seed=1, name="validation.jsonl")
    outcome = fit(spec_for(model, train, validation, tmp_path))
    first, last = outcome.history[0], outcome.history[-1]
    assert first["val_wer"] > 0.9, outcome.history  # untrained
    assert last["val_wer"] < 0.2 and last["val_rows"] == 40, outcome.history
    assert last["val_cer"] <= last["val_wer"] + 0.05
    samples = last["generations"]
    assert len(samples) == 3 and all(s["prompt"].startswith("clips/") for s in samples)
    row = json.loads(validation.read_text().splitlines()[0])
    transcribed = subprocess.run(
        [sys.executable, "-c", TRANSCRIBE, outcome.model_dir, str(validation.parent / row["audio"])],
        capture_output=True,
        text=True,
    )
    assert transcribed.returncode == 0, transcribed.stderr[-2000:]
    assert json.loads(transcribed.stdout.strip().splitlines()[-1]) == row["text"]
    # raft eval scores the export on every row, in one process: the same WER and CER (up to
    # a word that batching's float rounding may flip in greedy decoding).
    scored = evaluate_model(outcome.model_dir, str(validation))
    assert scored["rows"] == 40
    assert scored["val_wer"] == pytest.approx(last["val_wer"], abs=0.03), (scored, last)
    assert scored["val_cer"] == pytest.approx(last["val_cer"], abs=0.03), (scored, last)


def test_a_corrupt_or_empty_clip_is_named(tmp_path):
    model = make_tiny_speech_model(tmp_path / "whisper")
    data = write_toy_speech(tmp_path / "speech", 12, seed=0, name="train.jsonl")
    (data.parent / "clips" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVE garbage")
    with data.open("a") as handle:
        handle.write(json.dumps({"audio": "clips/broken.wav", "text": "low"}) + "\n")
    spec = spec_for(model, data, data, tmp_path)
    with pytest.raises(DataError, match=r"train.jsonl, line 13: column 'audio': cannot be read as audio"):
        prepare(spec)
    # 1 bad clip in 13 rows (7.7%) is over the default data.max_bad_fraction of 5%.
    update = {"on_bad_rows": "skip", "max_bad_fraction": 0.1}
    skipping = spec.model_copy(update={"data": spec.data.model_copy(update=update)})
    prepared = prepare(skipping)
    assert prepared.skipped == {"data.train": {"bad_media": 1}, "data.validation": {"bad_media": 1}}
    assert prepared.train_rows == 12
