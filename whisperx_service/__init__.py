"""Shared pieces of the offline WhisperX service: settings, schema, errors, audio, logging."""

import os

# Offline by construction: every weight comes from the BentoML model store or an installed
# package. These switches make Hugging Face / transformers fail fast instead of trying a hub.
for _switch in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_switch, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Three model runners share the cores: OpenMP threads (torch's and CTranslate2's libgomp) that
# spin after each parallel region burn the CPU the other runners are waiting for. Read when
# libgomp loads, so set before torch or ctranslate2 is imported; an operator's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
