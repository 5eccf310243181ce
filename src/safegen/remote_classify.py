"""``safegen classify --server URL``: the same rows as the local mode, scored by a server.

The CLI's first user of :mod:`safegen.client`: requests of at most the server's files-per-request
limit, sent a few at a time, with the client's retries and progress bar.
"""

from __future__ import annotations

from pathlib import Path

from safegen.client import Client, ImageResult, IncompleteClassification, SafegenClientError


def row(result: ImageResult) -> dict[str, object]:
    """One output row, in the local mode's shape (path, label, nsfw_score | error)."""
    if result.error is not None:
        return {"path": result.source, "error": result.error.message}
    assert result.nsfw_score is not None
    return {"path": result.source, "label": result.label,
            "nsfw_score": round(result.nsfw_score, 6)}


def classify_on_server(
    files: list[Path], server: str, *, quiet: bool, concurrency: int
) -> tuple[list[dict[str, object]], str | None]:
    """Rows for ``files`` in order, and a message when the run stopped early (rows then keep
    what finished; the rest say they were not classified). The API key: ``SAFEGEN_API_KEY``."""
    try:
        with Client(server, max_concurrency=concurrency) as client:
            results = client.classify(files, progress=not quiet)
    except IncompleteClassification as exc:
        return [row(r) for r in exc.results], exc.message
    except SafegenClientError as exc:
        return [], str(exc)
    return [row(r) for r in results], None
