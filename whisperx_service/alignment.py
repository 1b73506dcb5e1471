"""Forced alignment of a batch of decoded chunks (`AlignJob`s of any number of requests).

The alignment runner's `align` is a batchable BentoML API: the pipeline sends every decoded chunk
as its own call and BentoML's adaptive batching hands the runner the chunks of all in-flight
requests as one list. What is done with that list depends on the device (`batches_on`):

- on a CPU, `align_each`: each chunk through whisperx.align on its own, as the runner always did
  (padded batches were 1.2-1.4x slower there, bench/align_batch.py);
- on a GPU, `align_batched`: the wav2vec2 emissions of all the chunks' segments computed in a few
  padded batches of one language and similar length, and each segment then given to whisperx.align
  itself with a stand-in model (`_Replay`) that hands back its logits, so text cleaning, NLTK
  sentence splitting, CTC, timing and interpolation stay exactly whisperx's code, unpatched.

torch and whisperx are imported inside functions: every process of the graph imports the
alignment runner, which imports this module.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from whisperx_service.audio import SAMPLE_RATE, pcm_to_float
from whisperx_service.logs import bind_request_id
from whisperx_service.schema import AlignJob

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("whisperx_service.align")

# Most padding a batch may carry, as a share of its padded samples: padding is computed for nothing.
PADDING_BOUND = 0.2
# Most padded samples per batch (240 s): the feature encoder's first layer holds 512 channels
# per 5 samples, about 1.6 GB of float32 for this much audio, and a few such tensors are alive.
MAX_BATCH_SAMPLES = 240 * SAMPLE_RATE
# wav2vec2's feature encoder needs 400 samples (25 ms); whisperx pads shorter segments to it.
MIN_SAMPLES = 400

# A language's wav2vec2 model and whisperx's metadata for it (whisperx.load_align_model's pair).
ModelFor = Callable[[str], tuple[Any, dict[str, Any]]]
# whisperx's aligned segments (plain dicts) of each job, in the jobs' order.
Aligned = list[list[dict[str, Any]]]


def whisperx_module() -> Any:
    """whisperx, with its punkt sentence splitter loaded once per language: whisperx.align reads
    the tables again for every segment (0.08 s of CPU each; the GPU path aligns segment by segment)."""
    import whisperx
    import whisperx.alignment as whisperx_alignment

    if not hasattr(whisperx_alignment.nltk_load, "cache_info"):
        whisperx_alignment.nltk_load = functools.cache(whisperx_alignment.nltk_load)
    return whisperx


def batches_on(device: str) -> bool:
    """Padded emission batches on CUDA only: on a CPU one segment at a time is faster."""
    return device.startswith("cuda")


def _transcript(job: AlignJob) -> list[dict[str, Any]]:
    return [{"start": s.start, "end": s.end, "text": s.text} for s in job.segments]


def align_each(jobs: Sequence[AlignJob], model_for: ModelFor, device: str) -> Aligned:
    """whisperx.align on each job alone: its segments one at a time, as whisperx does."""
    import torch

    whisperx = whisperx_module()
    out: Aligned = []
    for job in jobs:
        model, metadata = model_for(job.language)
        with bind_request_id(job.request_id), torch.inference_mode():
            aligned = whisperx.align(_transcript(job), model, metadata, pcm_to_float(job.audio), device,
                                     return_char_alignments=False)
        out.append(list(aligned["segments"]))
    return out


def model_waveform(audio: np.ndarray, start: float, end: float) -> np.ndarray | None:
    """The samples whisperx.align feeds the model for a segment, or None where it skips the
    segment for starting past the end of the audio (same slicing, same zero padding)."""
    if start >= audio.shape[0] / SAMPLE_RATE:
        return None
    waveform = audio[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)]
    if waveform.shape[0] < MIN_SAMPLES:
        waveform = np.pad(waveform, (0, MIN_SAMPLES - waveform.shape[0]))
    return waveform


# Valid frames of the first conv layer of each row of the batch the current thread computes.
_valid_frames = threading.local()
_hooked: weakref.WeakSet[Any] = weakref.WeakSet()


def _masked_group_norm(norm: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
    """Forward hook of a group-norm feature encoder's GroupNorm: each row normalised over its own
    frames, as it is alone (PyTorch's GroupNorm would count the padding in its statistics)."""
    from torch.nn.functional import group_norm

    valid: list[int] | None = getattr(_valid_frames, "frames", None)
    x = args[0]
    if valid is None or x.shape[0] != len(valid):
        return None  # not a padded batch of this thread: the module's own output
    for row, frames in enumerate(valid):
        # Row by row into the module's output: no batch-sized temporaries.
        output[row, :, :frames] = group_norm(x[row:row + 1, :, :frames], norm.num_groups, norm.weight,
                                             norm.bias, norm.eps)[0]
    return output


def batch_logits(model: Any, waveforms: Sequence[np.ndarray], device: str) -> list[torch.Tensor]:
    """wav2vec2 logits of each waveform, computed in one zero-padded batch; each comes back on
    the CPU, shaped (1, frames, vocabulary), cut to the frames of its own unpadded samples.

    Padding changes no valid frame: the transformer gets an attention mask (it zeroes padded
    frames before the positional convolution and attends to none of them), and a group-norm
    feature encoder (wav2vec2-base) normalises each row over its own samples. Every other layer
    of the feature encoder is local in time, so the result is the per-segment one; Hugging Face's
    advice to zero-pad group-norm models without a mask gives results that depend on the padding
    (words of a sharpened random aligner moved 40-200 ms even at 5% padding).
    """
    import torch

    lengths = torch.tensor([w.shape[0] for w in waveforms])
    padded = np.zeros((len(waveforms), int(lengths.max())), dtype=np.float32)
    for row, waveform in enumerate(waveforms):
        padded[row, :waveform.shape[0]] = waveform
    batch = torch.from_numpy(padded)
    mask = None
    if int(lengths.min()) < batch.shape[1]:
        mask = (torch.arange(batch.shape[1])[None, :] < lengths[:, None]).to(device)
        first = model.wav2vec2.feature_extractor.conv_layers[0]
        norm = getattr(first, "layer_norm", None)
        if isinstance(norm, torch.nn.GroupNorm):
            if norm not in _hooked:
                norm.register_forward_hook(_masked_group_norm)
                _hooked.add(norm)
            kernel, stride = model.config.conv_kernel[0], model.config.conv_stride[0]
            _valid_frames.frames = ((lengths - kernel) // stride + 1).tolist()
    frames = model._get_feat_extract_output_lengths(lengths).tolist()
    try:
        with torch.inference_mode():
            logits = model(batch.to(device), attention_mask=mask).logits
            # A copy even on the CPU: a view would keep the whole padded batch alive.
            return [logits[row:row + 1, :n].to("cpu", copy=True) for row, n in enumerate(frames)]
    finally:
        _valid_frames.frames = None


class _Replay:
    """Stands in for the wav2vec2 model in whisperx.align: hands back the logits computed in a
    batch. Called with anything else than the waveform they were computed from (whisperx decided
    otherwise than `model_waveform`), it runs the real model, as whisperx would have."""

    def __init__(self, logits: torch.Tensor | None, samples: int, model: Any, device: str) -> None:
        self.logits, self.samples, self.model, self.device = logits, samples, model, device

    def __call__(self, waveform: torch.Tensor) -> SimpleNamespace:
        logits, self.logits = self.logits, None  # whisperx calls it once per segment
        if logits is None or waveform.shape[-1] != self.samples:
            logger.warning("no batched emission for a %d-sample segment: computing it alone",
                           waveform.shape[-1])
            logits = self.model(waveform.to(self.device)).logits
        return SimpleNamespace(logits=logits)


def align_with_logits(
    segment: dict[str, Any], logits: torch.Tensor | None, samples: int, model: Any,
    metadata: dict[str, Any], audio: torch.Tensor, device: str,
) -> list[dict[str, Any]]:
    """whisperx.align on one segment whose emission is already computed: its sentences."""
    whisperx = whisperx_module()
    # device "cpu": whisperx moves the waveform to it before calling the model, and the stand-in
    # needs only its length.
    aligned = whisperx.align([segment], _Replay(logits, samples, model, device),
                             {**metadata, "type": "huggingface"}, audio, "cpu",
                             return_char_alignments=False)
    return list(aligned["segments"])


def next_batch(lengths: Sequence[int], anchor: int, max_batch_size: int,
               padding_bound: float = PADDING_BOUND, max_samples: int = MAX_BATCH_SAMPLES) -> list[int]:
    """Indices of one batch around `anchor`: its neighbours in length order, taken shorter or
    longer, whichever pads less, while the padding stays within `padding_bound` of the padded
    samples and those stay within `max_samples`."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    at = order.index(anchor)
    low, high = at, at + 1  # the batch is order[low:high]
    total, longest = lengths[anchor], lengths[anchor]

    def waste(extra: int, new_longest: int, size: int) -> float:
        padded = new_longest * size
        if padded > max_samples:
            return float("inf")
        return (padded - total - extra) / padded if padded else 0.0

    while high - low < max_batch_size:
        options = []
        if low > 0:
            options.append((waste(lengths[order[low - 1]], longest, high - low + 1), -1))
        if high < len(order):
            nxt = lengths[order[high]]
            options.append((waste(nxt, max(longest, nxt), high - low + 1), 1))
        best = min(options, default=None)
        if best is None or best[0] > padding_bound:
            break
        if best[1] < 0:
            low -= 1
            total += lengths[order[low]]
        else:
            total += lengths[order[high]]
            longest = max(longest, lengths[order[high]])
            high += 1
    return order[low:high]


def plan_batches(lengths: Sequence[int], max_batch_size: int,
                 padding_bound: float = PADDING_BOUND) -> list[list[int]]:
    """Every index in batches, in the order they run (the earliest segment left anchors the next
    batch, so the first jobs' segments come first)."""
    left = list(range(len(lengths)))
    batches = []
    while left:
        picked = next_batch([lengths[i] for i in left], 0, max_batch_size, padding_bound)
        batches.append([left[i] for i in sorted(picked)])
        taken = set(picked)
        left = [index for position, index in enumerate(left) if position not in taken]
    return batches


def _emissions(model: Any, waveforms: list[np.ndarray], device: str) -> list[torch.Tensor]:
    """`batch_logits`, and where the padded batch fails (out of memory...), each segment alone:
    a failure the batch caused is no failure of its segments."""
    try:
        return batch_logits(model, waveforms, device)
    except Exception as error:  # noqa: BLE001 - retried segment by segment; a lone failure is raised
        if len(waveforms) == 1:
            raise
        logger.warning("batch of %d segments failed (%s): computing them alone", len(waveforms), error)
        return [batch_logits(model, [waveform], device)[0] for waveform in waveforms]


def align_batched(jobs: Sequence[AlignJob], model_for: ModelFor, device: str, max_batch_size: int,
                  padding_bound: float = PADDING_BOUND) -> Aligned:
    """What `align_each` gives, the emissions of all the jobs' segments computed in padded batches
    of one language, at most `max_batch_size` segments and `padding_bound` padding each.

    Segments whisperx leaves unaligned without running the model (no text, or starting past the
    audio) get no emission; each batch's segments go through CTC as soon as it is computed, so
    only one batch's emissions are alive at a time."""
    import torch

    audios = [pcm_to_float(job.audio) for job in jobs]
    tensors = [torch.from_numpy(audio) for audio in audios]
    transcripts = [_transcript(job) for job in jobs]
    # Each segment's sentences, in place, so that each job's come back in its own order.
    sentences: list[list[list[dict[str, Any]]]] = [[[] for _ in t] for t in transcripts]

    def ctc(j: int, k: int, logits: torch.Tensor | None, samples: int, model: Any,
            metadata: dict[str, Any]) -> None:
        with bind_request_id(jobs[j].request_id):
            sentences[j][k] = align_with_logits(transcripts[j][k], logits, samples, model, metadata,
                                                tensors[j], device)

    for language in dict.fromkeys(job.language for job in jobs):  # first seen, first aligned
        model, metadata = model_for(language)
        members = [j for j, job in enumerate(jobs) if job.language == language]
        if metadata["type"] != "huggingface":
            # torchaudio's pipelines take no attention mask: whisperx's own way, job by job.
            for j, aligned in zip(members, align_each([jobs[j] for j in members], model_for, device),
                                  strict=True):
                sentences[j] = [aligned]
            continue
        waiting: list[tuple[int, int, np.ndarray]] = []  # (job, segment, waveform) needing an emission
        for j in members:
            for k, segment in enumerate(transcripts[j]):
                waveform = (model_waveform(audios[j], segment["start"], segment["end"])
                            if segment["text"].strip() else None)
                if waveform is None:
                    ctc(j, k, None, -1, model, metadata)
                else:
                    waiting.append((j, k, waveform))
        for batch in plan_batches([w.shape[0] for _, _, w in waiting], max_batch_size, padding_bound):
            logits = _emissions(model, [waiting[i][2] for i in batch], device)
            for i, emission in zip(batch, logits, strict=True):
                j, k, waveform = waiting[i]
                ctc(j, k, emission, waveform.shape[0], model, metadata)
            del logits  # freed before the next batch is computed
    return [[s for segment in job for s in segment] for job in sentences]
