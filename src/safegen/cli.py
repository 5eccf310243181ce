"""Command line: ``safegen serve | classify | download``."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from safegen.errors import SafegenError
from safegen.settings import Settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}
logger = logging.getLogger("safegen.cli")


def _settings(**overrides: object) -> Settings:
    try:
        return Settings.model_validate({k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"SAFEGEN_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise SystemExit(f"safegen: invalid settings: {problems}") from None


def serve(args: argparse.Namespace) -> int:
    from safegen.app import create_app
    from safegen.logs import configure_logging
    from safegen.preflight import preflight

    settings = _settings(host=args.host, port=args.port)
    configure_logging(settings.log_level)
    try:
        preflight(settings)
    except SafegenError as exc:
        print(f"safegen: {exc.message}", file=sys.stderr)
        return 2
    if args.ray:
        return serve_on_ray(settings)
    app = create_app(settings)
    # uvicorn handles SIGTERM/SIGINT itself (stop accepting, drain, run the lifespan shutdown) and
    # then re-raises the signal to the handler that was installed before it. A no-op handler there
    # makes a graceful stop end with exit status 0, as process supervisors expect.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: None)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    _DrainingServer(config, app).run()
    return 0


def serve_on_ray(settings: Settings) -> int:
    """The same app on a local Ray Serve instance (classifier and generator as deployments)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        print("safegen: --ray needs the 'ray' extra: pip install 'safegen[ray]'", file=sys.stderr)
        return 2
    from safegen.ray_serve import serve_locally

    try:
        serve_locally(settings)
    except ValueError as exc:
        print(f"safegen: {exc}", file=sys.stderr)
        return 2
    return 0


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, answering /readyz 503 from the moment a stop signal arrives (uvicorn
    itself only notices the signal on its next 0.1 s tick)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.app.state.stopping = True
        self.app.state.metrics.ready.set(0)
        super().handle_exit(sig, frame)


def iter_images(paths: Sequence[Path], recursive: bool) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            yield from sorted(
                p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            yield path


def classify(args: argparse.Namespace) -> int:
    """Score local files with the same engine the server uses (batched, off the main thread),
    or with ``--server``, on a running server through the Python client."""
    from tqdm import tqdm

    from safegen.moderation.engine import ClassifierEngine, EngineConfig

    files = list(iter_images(args.paths, args.recursive))
    if not files:
        print("safegen: no image files found", file=sys.stderr)
        return 2
    if args.server:
        from safegen.remote_classify import classify_on_server

        rows, stopped = classify_on_server(
            files, args.server, quiet=args.quiet, concurrency=args.concurrency
        )
        if stopped:
            print(f"safegen: {stopped}", file=sys.stderr)
            if not rows:  # nothing was scored (a refused key, no server): no empty table
                return 1
        return _write_rows(rows, args.format) or (1 if stopped else 0)
    settings = _settings(nsfw_model=args.model)

    async def run() -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        async with ClassifierEngine(EngineConfig.from_settings(settings)) as engine:
            chunk = settings.max_batch_size
            with tqdm(total=len(files), unit="img", disable=args.quiet, file=sys.stderr) as bar:
                for start in range(0, len(files), chunk):
                    part = files[start : start + chunk]
                    datas = [_read(p) for p in part]
                    results = await engine.classify_bytes(datas)
                    for path, result in zip(part, results, strict=True):
                        if isinstance(result, SafegenError):
                            rows.append({"path": str(path), "error": result.message})
                        else:
                            rows.append({"path": str(path), "label": result.label,
                                         "nsfw_score": round(result.nsfw_score, 6),
                                         "frames_scored": result.frames_scored,
                                         "worst_frame": result.worst_frame})
                    bar.update(len(part))
        return rows

    try:
        rows = asyncio.run(run())
    except SafegenError as exc:
        print(f"safegen: {exc.message}", file=sys.stderr)
        return 1
    return _write_rows(rows, args.format)


def _write_rows(rows: list[dict[str, object]], output_format: str) -> int:
    """Print the rows; the exit status is 1 when any image could not be scored."""
    if output_format == "json":
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        # The CSV keeps its four columns; the JSON output also tells which frame scored worst.
        writer = csv.DictWriter(sys.stdout, ["path", "label", "nsfw_score", "error"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return 1 if any("error" in r for r in rows) else 0


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""  # reported as an empty file, like an empty upload


def download(args: argparse.Namespace) -> int:
    from safegen.hub import download as fetch

    settings = _settings()
    models = args.models or [settings.nsfw_model]
    for model in models:
        try:
            path = fetch(model, settings.model_cache_dir)
        except SafegenError as exc:
            print(f"safegen: {exc.message}", file=sys.stderr)
            return 1
        print(f"{model}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safegen", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("serve", help="run the HTTP service (settings from SAFEGEN_* env)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--ray", action="store_true",
                   help="run on a local Ray Serve (pip install 'safegen[ray]'); "
                   "SAFEGEN_RAY_* sizes it")
    p.set_defaults(func=serve)

    p = commands.add_parser("classify", help="score local image files and folders")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--model", help="hub id or local directory (default: SAFEGEN_NSFW_MODEL)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--server", metavar="URL",
                   help="score on a safegen server instead of locally (API key: SAFEGEN_API_KEY)")
    p.add_argument("--concurrency", type=int, default=4,
                   help="with --server: requests in flight at once (default 4)")
    p.set_defaults(func=classify)

    p = commands.add_parser(
        "download", help="fill the local model cache (run on a machine that reaches the hub)"
    )
    p.add_argument("models", nargs="*", help="hub ids (default: the configured models)")
    p.set_defaults(func=download)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
