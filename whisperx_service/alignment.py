"""Batched wav2vec2 emissions for whisperx's forced alignment, across segments and requests.

whisperx.align runs the wav2vec2 model on one segment at a time (a batch of 1) inside its own
loop, then aligns that segment's characters with CTC (trellis + backtrack) and builds words and
sentences. Here the emissions of many segments, of any number of requests, are computed in a
few padded batches (`EmissionBatcher`), and each segment is then given to whisperx.align itself
with a stand-in model (`_Replay`) that hands back its precomputed logits: text cleaning, NLTK
sentence splitting, CTC, timing and interpolation stay exactly whisperx's code, unpatched.

torch and whisperx are imported inside functions: every process of the graph imports the
alignment runner, which imports this module.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from whisperx_service.audio import SAMPLE_RATE

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("whisperx_service.align")

# Most padding a batch may carry, as a share of its padded samples: padding is computed for nothing.
PADDING_BOUND = 0.2
# How long a segment may wait for batch mates, so that requests arriving together share
# batches; a busy batcher gathers while the model runs.
GATHER_S = 0.01
# Most padded samples per batch (240 s): the feature encoder's first layer holds 512 channels
# per 5 samples, about 1.6 GB of float32 for this much audio, and a few such tensors are alive.
MAX_BATCH_SAMPLES = 240 * SAMPLE_RATE
# wav2vec2's feature encoder needs 400 samples (25 ms); whisperx pads shorter segments to it.
MIN_SAMPLES = 400
# Segments per batch when WXS_ALIGN_BATCH_SIZE is unset: on a CPU padded batches only cost more.
DEFAULT_BATCH_SIZE = {"cuda": 16, "cpu": 1}

ComputeLogits = Callable[[str, list[np.ndarray]], list["torch.Tensor"]]


def batching_enabled(setting: Literal["auto", "on", "off"], device: str) -> bool:
    """`auto`: batched on CUDA only; on a CPU one segment at a time is faster (bench/align_batch.py)."""
    if setting == "auto":
        return device.startswith("cuda")
    return setting == "on"


def default_batch_size(device: str) -> int:
    return DEFAULT_BATCH_SIZE["cuda" if device.startswith("cuda") else "cpu"]


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
    advice to zero-pad group-norm models without a mask gives results that depend on the padding.
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
    import whisperx

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
    """Every index in batches, in the order the batcher runs them (the earliest segment left
    anchors the next batch)."""
    left = list(range(len(lengths)))
    batches = []
    while left:
        picked = next_batch([lengths[i] for i in left], 0, max_batch_size, padding_bound)
        batches.append([left[i] for i in sorted(picked)])
        taken = set(picked)
        left = [index for position, index in enumerate(left) if position not in taken]
    return batches


@dataclass(eq=False)  # compared by identity: a waveform is no key
class _Job:
    key: str
    waveform: np.ndarray
    seq: int
    submitted: float = field(default_factory=time.monotonic)
    future: Future[torch.Tensor] = field(default_factory=Future)


class EmissionBatcher:
    """One thread that computes the emissions of every submitted segment in padded batches.

    Segments of all concurrent calls meet here: each batch holds segments of one key (the
    language, hence one model) and of similar length (`next_batch`), the earliest submitted
    segment first, so a call's first segments come back first and its CTC can start while
    later batches run. BentoML's own adaptive batching cannot serve this: it batches HTTP calls
    to a batchable API taking one list (the gateway's `align` call takes audio, segments and a
    language), and a service's calls to its own batchable API bypass the batcher.
    """

    def __init__(self, compute: ComputeLogits, max_batch_size: int,
                 gather_s: float = GATHER_S, padding_bound: float = PADDING_BOUND) -> None:
        self.compute, self.max_batch_size = compute, max_batch_size
        self.gather_s, self.padding_bound = gather_s, padding_bound
        self._pending: list[_Job] = []
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, key: str, waveforms: Sequence[np.ndarray]) -> list[Future[torch.Tensor]]:
        jobs = [_Job(key, waveform, next(self._seq)) for waveform in waveforms]
        with self._wake:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="align-batcher", daemon=True)
                self._thread.start()
            self._pending.extend(jobs)
            self._wake.notify()
        return [job.future for job in jobs]

    def _take(self) -> list[_Job]:
        """Block until there is work; then the next batch, removed from the pending jobs."""
        with self._wake:
            while not self._pending:
                self._wake.wait()
            # A segment waits at most gather_s for batch mates (a busy batcher has made it wait longer).
            deadline = min(job.submitted for job in self._pending) + self.gather_s
            while len(self._pending) < self.max_batch_size and time.monotonic() < deadline:
                self._wake.wait(deadline - time.monotonic())
            # A request that failed cancels its jobs still waiting: not computed for nobody.
            self._pending = [job for job in self._pending if not job.future.cancelled()]
            if not self._pending:
                return []
            oldest = min(self._pending, key=lambda job: job.seq)
            same = [job for job in self._pending if job.key == oldest.key]
            picked = next_batch([job.waveform.shape[0] for job in same], same.index(oldest),
                                self.max_batch_size, self.padding_bound)
            batch = [same[i] for i in picked]
            chosen = set(batch)
            self._pending = [job for job in self._pending if job not in chosen]
        # From here on a job cannot be cancelled; one cancelled just before is left out.
        return [job for job in batch if job.future.set_running_or_notify_cancel()]

    def _run(self) -> None:
        while True:
            try:
                batch = self._take()
            except Exception as error:  # noqa: BLE001 - a bug here must not leave requests waiting
                logger.exception("alignment batcher failed")
                with self._wake:
                    failed, self._pending = self._pending, []
                for job in failed:
                    if job.future.set_running_or_notify_cancel():
                        job.future.set_exception(error)
                continue
            if batch:
                self._compute(batch)
            del batch  # the jobs' waveforms are views of their requests' audio

    def _compute(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            logits = self.compute(batch[0].key, [job.waveform for job in batch])
        except Exception as error:  # noqa: BLE001 - handed to the requests that wait for it
            if len(batch) > 1:
                # Alone, each segment fails or not on its own: one request's trouble stays its own.
                logger.warning("batch of %d failed (%s): computing its segments alone", len(batch), error)
                for job in batch:
                    self._compute([job])
            else:
                batch[0].future.set_exception(error)
            return
        for job, result in zip(batch, logits, strict=True):
            job.future.set_result(result)
        longest = max(job.waveform.shape[0] for job in batch)
        logger.debug("emissions of %d segments (%s, padding %.0f%%) in %.3f s", len(batch), batch[0].key,
                     100 * (1 - sum(job.waveform.shape[0] for job in batch) / (longest * len(batch))),
                     time.perf_counter() - started)


def align_batched(
    batcher: EmissionBatcher, key: str, model: Any, metadata: dict[str, Any], audio: np.ndarray,
    transcript: list[dict[str, Any]], device: str,
) -> list[dict[str, Any]]:
    """whisperx.align's result segments for `transcript`, its emissions computed by `batcher`.

    Segments whisperx leaves unaligned without running the model (no text, or starting past the
    audio) send no emission; CTC runs segment by segment as their emissions come back."""
    import torch

    waveforms = [model_waveform(audio, s["start"], s["end"]) if s["text"].strip() else None
                 for s in transcript]
    sent = [w for w in waveforms if w is not None]
    futures = iter(batcher.submit(key, sent))
    pending: list[Future[torch.Tensor] | None] = [next(futures) if w is not None else None for w in waveforms]
    audio_tensor = torch.from_numpy(audio)
    result: list[dict[str, Any]] = []
    try:
        for index, segment in enumerate(transcript):
            future, pending[index] = pending[index], None  # drop each emission once it is aligned
            waveform, waveforms[index] = waveforms[index], None
            logits = future.result() if future is not None else None
            samples = waveform.shape[0] if waveform is not None else -1
            result += align_with_logits(segment, logits, samples, model, metadata, audio_tensor, device)
            del logits
    finally:
        for future in pending:
            if future is not None:
                future.cancel()
    return result
