"""A faster-whisper (CTranslate2) model of a real Whisper shape with random weights, for timing.

No large-v3 weights can be had offline. A randomly initialised model of the same shape does the
same arithmetic per encoder pass and per decoded token, so it times like the real one, provided
it decodes as many tokens as the real model would: random weights otherwise run every chunk to
the 448-token limit (or stop at once). `bench/throughput.py --gpu` therefore holds the output
length: end-of-text is suppressed and each chunk decodes exactly the mean number of tokens the
real `base` model emits per chunk on the same audio (`held_tokens_per_chunk`).

The vocabulary, tokenizer and special-token ids are those of the embedded `base` model (51,865
tokens; large-v3 has one more language token, which changes no timing).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WhisperShape:
    layers: int  # encoder and decoder each
    heads: int
    width: int
    n_mels: int


SHAPES = {
    "tiny": WhisperShape(layers=4, heads=6, width=384, n_mels=80),
    "base": WhisperShape(layers=6, heads=8, width=512, n_mels=80),
    "large-v3": WhisperShape(layers=32, heads=20, width=1280, n_mels=128),
    # large-v3's input (128 mel bins) at tiny's size: every file of the layout, cheap to serve
    "tiny-128": WhisperShape(layers=4, heads=6, width=384, n_mels=128),
}


def compute_type_for(device: str) -> str:
    """The CTranslate2 compute type both benchmark arms use on `device` (the service's default)."""
    return "float16" if device == "cuda" else "int8"


def build_random_whisper(base_dir: Path, dest: Path, shape: str, quantization: str = "float16") -> Path:
    """Write a CTranslate2 Whisper model of `shape` with random weights into `dest`."""
    import torch
    from ctranslate2.converters.transformers import WhisperLoader
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    dims = SHAPES[shape]
    vocabulary = (base_dir / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    base_config = json.loads((base_dir / "config.json").read_text())
    config = WhisperConfig(
        vocab_size=len(vocabulary), num_mel_bins=dims.n_mels, d_model=dims.width,
        encoder_layers=dims.layers, decoder_layers=dims.layers,
        encoder_attention_heads=dims.heads, decoder_attention_heads=dims.heads,
        encoder_ffn_dim=4 * dims.width, decoder_ffn_dim=4 * dims.width,
    )
    torch.manual_seed(0)
    # initialised in half precision: large-v3 then takes 3 GB of memory to build instead of 6
    model = WhisperForConditionalGeneration._from_config(config, dtype=torch.float16).eval()
    spec = WhisperLoader().get_model_spec(model)
    for key in ("suppress_ids", "suppress_ids_begin", "lang_ids"):
        setattr(spec.config, key, base_config[key])
    # Cross-attention heads for word timing: the last half of the layers, as CTranslate2 does
    # for models without a list (the real large-v3 list has 10 heads; the cost is per layer).
    spec.config.alignment_heads = [[layer, head] for layer in range(dims.layers // 2, dims.layers)
                                   for head in range(dims.heads)]
    spec.register_vocabulary(vocabulary)
    spec.validate()
    spec.optimize(quantization=quantization)
    dest.mkdir(parents=True, exist_ok=True)
    spec.save(str(dest))
    shutil.copy2(base_dir / "tokenizer.json", dest / "tokenizer.json")
    (dest / "preprocessor_config.json").write_text(json.dumps({
        "feature_size": dims.n_mels, "sampling_rate": 16000, "hop_length": 160, "chunk_length": 30,
        "n_fft": 400,
    }))
    del model
    return dest


def held_tokens_per_chunk(base_dir: Path, paths: list[Path], device: str) -> int:
    """Mean number of tokens the real `base` model emits per VAD chunk of these recordings."""
    import whisperx

    model = whisperx.load_model(str(base_dir), device, compute_type=compute_type_for(device))
    tokenizer = None
    counts: list[int] = []
    for path in paths:
        result = model.transcribe(whisperx.load_audio(str(path)), batch_size=8, language="en")
        if tokenizer is None:
            from faster_whisper.tokenizer import Tokenizer

            tokenizer = Tokenizer(model.model.hf_tokenizer, True, task="transcribe", language="en")
        counts += [len(tokenizer.encode(" " + segment["text"].strip())) for segment in result["segments"]]
    return max(1, round(sum(counts) / len(counts)))
