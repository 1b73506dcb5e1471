"""Serve one component of the service graph alone: the same image runs the gateway or any runner.

    python -m deploy.component --component asr --port 3000
    python -m deploy.component --component gateway --port 3000 \\
        --dependency asr=http://whisperx-asr:3000 --dependency align=http://whisperx-align:3000 \\
        --dependency diarize=http://whisperx-diarize:3000

This is what ``bentoml serve`` does, narrowed with BentoML's own switches of
``_bentoml_impl.server.serve_http``: ``service_name`` serves one service of the graph as a
dependency service (it keeps the pickle transport the gateway uses), and ``dependency_map``
(service name -> URL, what BentoML hands its workers as ``BENTOML_RUNNER_MAP``) points the
gateway at runners served elsewhere. A dependency left out of the map is started locally, as
``bentoml serve`` would. Inside a built bento (``src/`` beside ``bento.yaml``, as in the image)
the bento is served, with its models; in a source checkout, the project's ``bentofile.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger("whisperx_service.component")

GATEWAY = "gateway"
_SRC = Path(__file__).resolve().parents[1]


def default_bento_dir() -> Path:
    """The built bento holding this code (``<bento>/src/deploy``), else the source checkout."""
    bento = _SRC.parent
    return bento if (bento / "bento.yaml").is_file() else _SRC


def parse_dependency(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name or not url.startswith(("http://", "https://", "tcp://", "unix://")):
        raise argparse.ArgumentTypeError(f"expected NAME=URL (e.g. asr=http://asr:3000), got {text!r}")
    return name, url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.component", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--component", default=GATEWAY,
                        help="'gateway' or a runner's service name (asr, align, diarize)")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--dependency", action="append", type=parse_dependency, default=[],
                        metavar="NAME=URL", help="a runner served elsewhere (gateway only; repeatable)")
    parser.add_argument("--bento", type=Path, default=None,
                        help="bento or project directory (default: the one holding this code)")
    return parser


def resolve_component(svc: Any, component: str) -> str:
    """The service name ``serve_http`` takes: '' for the gateway (the graph's root)."""
    names = sorted(svc.all_services())
    if component in (GATEWAY, svc.name):
        return ""
    if component not in names:
        raise SystemExit(f"unknown component {component!r}: choose {GATEWAY} or one of {names}")
    return str(component)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from _bentoml_impl.loader import load
    from _bentoml_impl.server import serve_http
    from bentoml._internal.log import configure_server_logging

    configure_server_logging()
    bento = str((args.bento or default_bento_dir()).resolve())
    if sys.path[0] != bento:
        sys.path.insert(0, bento)
    svc = load(bento_identifier=bento, working_dir=bento)
    service_name = resolve_component(svc, args.component)
    dependency_map = dict(args.dependency)
    if service_name and dependency_map:
        raise SystemExit("--dependency applies to the gateway only: runners call no other service")
    unknown = set(dependency_map) - set(svc.all_services())
    if unknown:
        raise SystemExit(f"unknown dependencies {sorted(unknown)}: the graph has {sorted(svc.all_services())}")
    logger.info("serving %s from %s on port %d (remote: %s)", service_name or svc.name, bento,
                args.port, dependency_map or "none")
    svc.inject_config()
    serve_http(
        bento, working_dir=bento, host=args.host, port=args.port,
        service_name=service_name, dependency_map=dependency_map or None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
