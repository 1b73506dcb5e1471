"""The seed's production models as their public directories hold them, with random weights.

No production weights can be downloaded here (nothing gated, no model hub), so these builders
write the exact file layouts of the public snapshots with randomly initialised networks of the
right architecture, saved the way their own libraries save them:

- ``Systran/faster-whisper-large-v3``: CTranslate2 ``model.bin``, ``config.json`` (large-v3's 100
  language ids), ``preprocessor_config.json`` (128 mel bins), ``tokenizer.json`` and
  ``vocabulary.json`` (51,866 tokens, ``<|yue|>`` at 50358 as in large-v3);
- ``pyannote/speaker-diarization-3.1``: ``config.yaml`` naming ``pyannote/segmentation-3.0`` and
  ``pyannote/wespeaker-voxceleb-resnet34-LM`` by hub id, and those two model snapshots
  (``config.yaml`` + ``pytorch_model.bin`` as pyannote.audio's checkpoints: PyanNet, WeSpeakerResNet34);
- ``pyannote/speaker-diarization-community-1``: one snapshot with ``segmentation/``,
  ``embedding/`` and ``plda/`` (``xvec_transform.npz``, ``plda.npz``) sub-folders;
- ``jonatasgrosman/wav2vec2-large-xlsr-53-chinese-zh-cn``: ``Wav2Vec2ForCTC`` at the large-xlsr-53
  shape (315 M parameters) with a Chinese character vocabulary;
- ``facebook/wav2vec2-base-960h``: the Hugging Face form of whisperX's English default
  (``WAV2VEC2_ASR_BASE_960H``), 95 M parameters, upper-case letter vocabulary.

`hf_cache_entry` puts any of them into a Hugging Face hub cache (``models--org--name/blobs``,
``snapshots/<rev>/`` of symlinks, ``refs/main``), the form a copied ``~/.cache/huggingface/hub`` has.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import string
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.data import PROJECT

WHISPER_LARGE_V3 = "Systran/faster-whisper-large-v3"
DIARIZATION_3_1 = "pyannote/speaker-diarization-3.1"
SEGMENTATION_3_0 = "pyannote/segmentation-3.0"
WESPEAKER = "pyannote/wespeaker-voxceleb-resnet34-LM"
COMMUNITY_1 = "pyannote/speaker-diarization-community-1"
ALIGN_ZH = "jonatasgrosman/wav2vec2-large-xlsr-53-chinese-zh-cn"
ALIGN_EN = "facebook/wav2vec2-base-960h"

YUE = 50358  # large-v3's one new language token; every special token from here on moves up by one


def _model_card(dest: Path, licence: str, repo: str) -> None:
    """The README.md a Hugging Face snapshot carries, whose front matter names the licence."""
    (dest / "README.md").write_text(f"---\nlicense: {licence}\n---\n\n# {repo}\n\nRandom weights for tests.\n",
                                    encoding="utf-8")


# ---------------------------------------------------------------- faster-whisper large-v3

def _large_v3_vocabulary(base_dir: Path, dest: Path) -> None:
    """large-v3's vocabulary, tokenizer and config ids, derived from the embedded base model's
    (large-v3 = base's 51,865 tokens plus ``<|yue|>`` at 50358, later ids shifted by one)."""
    def shift(i: int) -> int:
        return i + 1 if i >= YUE else i

    words = (base_dir / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    words.insert(YUE, "<|yue|>")
    (dest / "vocabulary.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    config = json.loads((base_dir / "config.json").read_text())
    config["suppress_ids"] = [shift(i) for i in config["suppress_ids"]]
    config["suppress_ids_begin"] = [shift(i) for i in config["suppress_ids_begin"]]
    config["lang_ids"] = [*config["lang_ids"], YUE]
    (dest / "config.json").write_text(json.dumps(config))
    tokenizer = json.loads((base_dir / "tokenizer.json").read_text(encoding="utf-8"))
    added = [{**t, "id": shift(t["id"])} for t in tokenizer["added_tokens"]]
    template = next(t for t in added if t["content"] == "<|su|>")
    added.append({**template, "id": YUE, "content": "<|yue|>"})
    tokenizer["added_tokens"] = sorted(added, key=lambda t: t["id"])
    (dest / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")


def build_faster_whisper_large_v3(dest: Path, base_dir: Path, *, shape: str = "large-v3") -> Path:
    """Systran/faster-whisper-large-v3's files. `shape` "large-v3" is the full 1.55 B-parameter
    network (3.1 GB float16, minutes on 2 cores); "tiny-128" keeps every file, vocabulary and the
    128 mel bins with tiny's layer sizes (for served tests)."""
    sys.path.insert(0, str(PROJECT / "bench"))
    try:
        import random_whisper
    finally:
        sys.path.remove(str(PROJECT / "bench"))
    vocab_dir = dest.parent / f".{dest.name}-vocab"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    _large_v3_vocabulary(base_dir, vocab_dir)
    random_whisper.build_random_whisper(vocab_dir, dest, shape, quantization="float16")
    shutil.rmtree(vocab_dir)
    # CTranslate2 writes vocabulary.json for a spec's vocabulary (Systran's snapshot has that one)
    assert (dest / "vocabulary.json").is_file() or (dest / "vocabulary.txt").is_file()
    _model_card(dest, "mit", WHISPER_LARGE_V3)
    return dest


# ---------------------------------------------------------------- pyannote

def _pyannote_checkpoint(model: Any) -> dict[str, Any]:
    """The dict pyannote.audio writes to ``pytorch_model.bin`` (Lightning's checkpoint plus the
    ``pyannote.audio`` entry of `Model.on_save_checkpoint`)."""
    import lightning

    checkpoint: dict[str, Any] = {
        "epoch": 0, "global_step": 0, "pytorch-lightning_version": lightning.__version__,
        "state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
        "hparams_name": "kwargs",
    }
    model.on_save_checkpoint(checkpoint)
    return checkpoint


def build_segmentation_3_0(dest: Path) -> Path:
    """pyannote/segmentation-3.0: PyanNet (SincNet, 4 LSTM layers, powerset of 3 speakers)."""
    import torch
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.segmentation import PyanNet

    torch.manual_seed(0)
    hparams: dict[str, Any] = {"sincnet": {"stride": 10},
               "lstm": {"hidden_size": 128, "num_layers": 4, "bidirectional": True, "monolithic": True},
               "linear": {"hidden_size": 128, "num_layers": 2}}
    model = PyanNet(sample_rate=16000, num_channels=1, **hparams)
    model.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION, resolution=Resolution.FRAME, duration=10.0,
        min_duration=10.0, warm_up=(0.0, 0.0), classes=["speaker#1", "speaker#2", "speaker#3"],
        powerset_max_classes=2, permutation_invariant=True,
    )
    model.build()
    dest.mkdir(parents=True, exist_ok=True)
    torch.save(_pyannote_checkpoint(model), dest / "pytorch_model.bin")
    (dest / "config.yaml").write_text(yaml.safe_dump({
        "task": {"_target_": "pyannote.audio.tasks.SpeakerDiarization", "duration": 10.0,
                 "max_speakers_per_chunk": 3, "max_speakers_per_frame": 2},
        "model": {"_target_": "pyannote.audio.models.segmentation.PyanNet", "sample_rate": 16000,
                  "num_channels": 1, **hparams},
    }, sort_keys=False))
    _model_card(dest, "mit", SEGMENTATION_3_0)
    return dest


def build_wespeaker_resnet34(dest: Path) -> Path:
    """pyannote/wespeaker-voxceleb-resnet34-LM: WeSpeakerResNet34 (6.6 M parameters, 256-dim)."""
    import torch
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import WeSpeakerResNet34

    torch.manual_seed(1)
    model = WeSpeakerResNet34(sample_rate=16000, num_channels=1)
    model.specifications = Specifications(problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK,
                                          duration=5.0, min_duration=1.0)
    model.build()
    dest.mkdir(parents=True, exist_ok=True)
    torch.save(_pyannote_checkpoint(model), dest / "pytorch_model.bin")
    (dest / "config.yaml").write_text(yaml.safe_dump({
        "model": {"_target_": "pyannote.audio.models.embedding.WeSpeakerResNet34",
                  "sample_rate": 16000, "num_channels": 1},
    }, sort_keys=False))
    _model_card(dest, "cc-by-4.0", WESPEAKER)
    return dest


def diarization_3_1_config() -> dict[str, Any]:
    """speaker-diarization-3.1's config.yaml, as published."""
    return {
        "version": "3.1.0",
        "pipeline": {"name": "pyannote.audio.pipelines.SpeakerDiarization", "params": {
            "clustering": "AgglomerativeClustering",
            "embedding": WESPEAKER,
            "embedding_batch_size": 32,
            "embedding_exclude_overlap": True,
            "segmentation": SEGMENTATION_3_0,
            "segmentation_batch_size": 32,
        }},
        "params": {
            "clustering": {"method": "centroid", "min_cluster_size": 12, "threshold": 0.7045654963945799},
            "segmentation": {"min_duration_off": 0.0},
        },
    }


def build_speaker_diarization_3_1(dest: Path) -> Path:
    """The pipeline snapshot alone (config.yaml + card); its sub-models are separate snapshots."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(diarization_3_1_config(), sort_keys=False))
    _model_card(dest, "mit", DIARIZATION_3_1)
    return dest


def build_loose_diarization_3_1(root: Path) -> Path:
    """As users download it for offline use: three directories side by side under `root`;
    returns the pipeline's."""
    build_segmentation_3_0(root / "segmentation-3.0")
    build_wespeaker_resnet34(root / "wespeaker-voxceleb-resnet34-LM")
    return build_speaker_diarization_3_1(root / "speaker-diarization-3.1")


def build_plda(dest: Path, *, embedding_dim: int = 256, lda_dim: int = 128) -> Path:
    """VBx's PLDA files as community-1 holds them (random, well-conditioned)."""
    import numpy as np

    rng = np.random.default_rng(2)
    dest.mkdir(parents=True, exist_ok=True)
    lda, _ = np.linalg.qr(rng.standard_normal((embedding_dim, embedding_dim)))
    np.savez(dest / "xvec_transform.npz", mean1=rng.standard_normal(embedding_dim).astype(np.float64) * 0.1,
             mean2=rng.standard_normal(lda_dim) * 0.1, lda=lda[:, :lda_dim])
    tr, _ = np.linalg.qr(rng.standard_normal((lda_dim, lda_dim)))
    np.savez(dest / "plda.npz", mu=rng.standard_normal(lda_dim) * 0.1, tr=tr,
             psi=np.sort(rng.uniform(0.5, 50.0, lda_dim))[::-1])
    return dest


def community_1_config() -> dict[str, Any]:
    """speaker-diarization-community-1's config.yaml, as published (pyannote.audio 4)."""
    return {
        "dependencies": {"pyannote.audio": "4.0.0"},
        "pipeline": {"name": "pyannote.audio.pipelines.SpeakerDiarization", "params": {
            "clustering": "VBxClustering",
            "embedding": "$model/embedding",
            "embedding_batch_size": 32,
            "embedding_exclude_overlap": True,
            "plda": "$model/plda",
            "segmentation": "$model/segmentation",
            "segmentation_batch_size": 32,
        }},
        "params": {
            "clustering": {"threshold": 0.6, "Fa": 0.07, "Fb": 0.8},
            "segmentation": {"min_duration_off": 0.0},
        },
    }


def build_community_1(dest: Path) -> Path:
    build_segmentation_3_0(dest / "segmentation")
    build_wespeaker_resnet34(dest / "embedding")
    build_plda(dest / "plda")
    for sub in ("segmentation", "embedding"):
        (dest / sub / "README.md").unlink()
    (dest / "config.yaml").write_text(yaml.safe_dump(community_1_config(), sort_keys=False))
    _model_card(dest, "cc-by-4.0", COMMUNITY_1)
    return dest


# ---------------------------------------------------------------- wav2vec2 aligners

# 3,500 CJK ideographs from the start of the block, plus every character of the AISHELL
# references, so that Mandarin text is aligned on real vocabulary entries.
def _chinese_characters() -> list[str]:
    from tests.data import AISHELL_DIR

    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 3500)]
    reference = (AISHELL_DIR / "reference.txt").read_text(encoding="utf-8")
    chars += [c for c in dict.fromkeys(reference) if "\u4e00" <= c <= "\u9fff" and c not in chars]
    return chars


def _save_wav2vec2(dest: Path, vocab: dict[str, int], config_kwargs: dict[str, Any], *,
                   do_lower_case: bool) -> None:
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = Wav2Vec2CTCTokenizer(str(dest / "vocab.json"), word_delimiter_token="|",
                                     do_lower_case=do_lower_case)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=True)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(dest)
    torch.manual_seed(0)
    config = Wav2Vec2Config(vocab_size=len(vocab), pad_token_id=vocab["<pad>"], **config_kwargs)
    config.architectures = ["Wav2Vec2ForCTC"]
    Wav2Vec2ForCTC(config).eval().save_pretrained(dest)


def build_wav2vec2_zh(dest: Path, *, full_size: bool = True) -> Path:
    """jonatasgrosman/wav2vec2-large-xlsr-53-chinese-zh-cn: 24 layers of 1024, layer-norm
    feature encoder, a vocabulary of Chinese characters. `full_size` False: 2 small layers."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    for ch in _chinese_characters():
        vocab[ch] = len(vocab)
    shape: dict[str, Any] = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                 intermediate_size=4096) if full_size else dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    _save_wav2vec2(dest, vocab, {**shape, "feat_extract_norm": "layer", "do_stable_layer_norm": True,
                                 "conv_bias": True, "feat_proj_dropout": 0.0, "layerdrop": 0.0},
                   do_lower_case=False)
    _model_card(dest, "apache-2.0", ALIGN_ZH)
    return dest


def build_wav2vec2_base_960h(dest: Path) -> Path:
    """facebook/wav2vec2-base-960h: 12 layers of 768, group-norm feature encoder, upper-case letters."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    for ch in "ETAONIHSRDLUMWCFGYPBVK'XJQZ":
        vocab[ch] = len(vocab)
    assert set(vocab) >= set(string.ascii_uppercase)
    _save_wav2vec2(dest, vocab, {"feat_extract_norm": "group", "do_stable_layer_norm": False},
                   do_lower_case=False)
    _model_card(dest, "apache-2.0", ALIGN_EN)
    return dest


# ---------------------------------------------------------------- Hugging Face hub cache

def hf_cache_entry(hub: Path, repo_id: str, build: Callable[[Path], object], revision: str | None = None) -> Path:
    """Build a snapshot with `build` and store it in `hub` as huggingface_hub does: file contents
    in ``blobs/<sha256>``, ``snapshots/<rev>/<path>`` relative symlinks to them, ``refs/main``.
    Returns the snapshot directory."""
    repo_dir = hub / f"models--{repo_id.replace('/', '--')}"
    staging = repo_dir / ".staging"
    build(staging)
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    revision = revision or hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / revision
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    for path in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        blob = repo_dir / "blobs" / digest
        if not blob.exists():
            path.rename(blob)
        link = snapshot / path.relative_to(staging)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (len(link.relative_to(repo_dir).parts) - 1)) / "blobs" / digest)
    shutil.rmtree(staging)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


def seed_hub(hub: Path, whisper_base_dir: Path, *, whisper_shape: str = "large-v3", zh_full_size: bool = True,
             english: bool = True) -> Path:
    """The seed's production set in one HF cache: faster-whisper large-v3 (`whisper_shape`),
    speaker-diarization-3.1 with its two sub-model snapshots, the Chinese aligner and (with
    `english`) the English one. `whisper_base_dir`: a stored whisper-base (large-v3's vocabulary
    is derived from it)."""
    hf_cache_entry(hub, WHISPER_LARGE_V3,
                   lambda d: build_faster_whisper_large_v3(d, whisper_base_dir, shape=whisper_shape))
    hf_cache_entry(hub, DIARIZATION_3_1, build_speaker_diarization_3_1)
    hf_cache_entry(hub, SEGMENTATION_3_0, build_segmentation_3_0)
    hf_cache_entry(hub, WESPEAKER, build_wespeaker_resnet34)
    hf_cache_entry(hub, ALIGN_ZH, lambda d: build_wav2vec2_zh(d, full_size=zh_full_size))
    if english:
        hf_cache_entry(hub, ALIGN_EN, build_wav2vec2_base_960h)
    return hub


def mandarin_recording(dest: Path) -> Path:
    """The shared AISHELL-1 utterances of one speaker, end to end, as one 16-kHz WAV."""
    import numpy as np
    import soundfile

    from tests.data import AISHELL_DIR

    audio = np.concatenate([soundfile.read(p, dtype="float32")[0] for p in sorted(AISHELL_DIR.glob("*.wav"))])
    soundfile.write(dest, audio, 16000, subtype="PCM_16")
    return dest
