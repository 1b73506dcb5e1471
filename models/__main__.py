"""`python -m models ...`: fill the BentoML model store and show its manifest.

    python -m models prepare                       # embedded defaults (idempotent)
    python -m models import-whisper large-v3 /data/faster-whisper-large-v3
    python -m models import-alignment zh /data/wav2vec2-large-xlsr-53-chinese-zh-cn
    python -m models import-diarization diarization-pyannote-3.1 /data/speaker-diarization-3.1
    python -m models import-hf-cache /data/huggingface/hub   # every model of a copied HF cache
    python -m models manifest                      # name, role, source, licence, sha256 per file

No token is needed or read: every source is a local directory or an installed package.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from . import catalog, sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="store the embedded default models")
    prep.add_argument("names", nargs="*", help=f"only these of: {', '.join(sources.EMBEDDED_DEFAULTS)}")
    imp_w = sub.add_parser("import-whisper", help="store a faster-whisper directory as whisper-NAME")
    imp_w.add_argument("name")
    imp_w.add_argument("path", type=Path)
    imp_a = sub.add_parser("import-alignment", help="store a wav2vec2 CTC directory for LANGUAGE")
    imp_a.add_argument("language")
    imp_a.add_argument("path", type=Path)
    imp_d = sub.add_parser("import-diarization", help="store a pyannote pipeline directory as NAME")
    imp_d.add_argument("name")
    imp_d.add_argument("path", type=Path)
    imp_c = sub.add_parser("import-hf-cache", help="store the models of a copied Hugging Face hub cache")
    imp_c.add_argument("hub", type=Path, help="a copy of ~/.cache/huggingface/hub")
    imp_c.add_argument("--only", nargs="+", metavar="REPO_ID", help="only these repositories")
    sub.add_parser("manifest", help="print the manifest of stored models as JSON")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("models")
    try:
        return _run(args, log)
    except (sources.ImportRefused, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 1


def _run(args: argparse.Namespace, log: logging.Logger) -> int:
    if args.command == "prepare":
        for tag in sources.prepare_defaults(args.names or None):
            log.info("ready: %s", tag)
    elif args.command == "import-whisper":
        log.info("stored %s", sources.import_whisper(args.name, args.path))
    elif args.command == "import-alignment":
        log.info("stored %s", sources.import_alignment(args.language, args.path))
    elif args.command == "import-diarization":
        log.info("stored %s", sources.import_diarization(args.name, args.path))
    elif args.command == "import-hf-cache":
        from .hf_cache import import_hf_cache

        outcomes = import_hf_cache(args.hub, args.only)
        for outcome in outcomes:
            log.info("%s: %s", outcome.repo_id, f"stored {outcome.tag}" if outcome.tag else f"FAILED: {outcome.error}")
        if not outcomes:
            log.error("%s holds no model this service uses", args.hub)
        return 0 if outcomes and all(o.tag for o in outcomes) else 1
    elif args.command == "manifest":
        json.dump([asdict(r) for r in catalog.manifest()], sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
