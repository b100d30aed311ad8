"""``synthvg serve``: a read-only dataset explorer in the browser (docs/EXPLORER.md).

A plain package: :class:`~synthvg.explorer.data.Explorer` reads the dataset through the
``synthvg sql`` sandbox, :func:`~synthvg.explorer.app.create_app` serves it (FastAPI, pages
rendered on the server, one static script, nothing from a CDN), :func:`serve` runs it with
uvicorn. Nothing here imports Prefect.
"""

from __future__ import annotations

import sys

from synthvg.explorer.config import ExplorerConfig, check_bind, is_loopback


def serve(config: ExplorerConfig, *, log_level: str = "warning") -> None:
    """Open the dataset, then serve it until interrupted (refuses a public bind without a token)."""
    import uvicorn

    from synthvg.explorer.app import create_app

    check_bind(config)
    app = create_app(config)  # opens the dataset and builds its index: seconds on a big root
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(
        f"serving {config.root} at http://{host}:{config.port}/"
        + (" (open it once with ?token=<your token>)" if config.token else "")
        + "; Ctrl+C stops",
        file=sys.stderr,
        flush=True,
    )
    # No access log: with a token, a first visit's URL carries it (?token=), and secrets are
    # never written anywhere.
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level, access_log=False)


__all__ = ["ExplorerConfig", "check_bind", "is_loopback", "serve"]
