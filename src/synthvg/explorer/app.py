"""The explorer's web app: server-rendered pages (Jinja2, every value escaped), one static
script, no CDN. Read-only: every route is a GET, and SQL goes through the sandbox."""

from __future__ import annotations

import csv
import functools
import hmac
import io
import mimetypes
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import duckdb
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader

from synthvg.explorer.config import ExplorerConfig, is_loopback
from synthvg.explorer.data import STAGES, Explorer, GalleryFilters, NotFound
from synthvg.explorer.shapes import colour, mask_path
from synthvg.stats import PAPER_TABLE_1
from synthvg.storage import QueryTimeout, ReadOnlyError

HERE = Path(__file__).parent
TOKEN_COOKIE = "synthvg_explorer_token"
THUMB_SIDE = 256
#: Browsers show these as they are; other formats are converted to PNG.
WEB_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
SECURITY_HEADERS = {
    # Every script is our static file; no inline script or style runs, whatever a page holds.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def image_url(image_id: str) -> str:
    return "/image/" + quote(image_id, safe=":@")


def _fmt(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        image_url=image_url, colour=colour, mask_path=mask_path, fmt=_fmt, quote=quote
    )
    return env


class _LRU:
    """A small thread-safe byte cache (thumbnails)."""

    def __init__(self, size: int):
        self.size, self.lock = size, threading.Lock()
        self.items: OrderedDict[str, bytes] = OrderedDict()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key, value) -> None:
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)


def create_app(config: ExplorerConfig, explorer: Explorer | None = None) -> FastAPI:
    """The app for ``config``; opens the dataset (or uses ``explorer``) once, here."""
    ex = explorer or Explorer(config)
    env = _templates()
    thumbs = _LRU(4096)
    token = config.token.get_secret_value() if config.token else None
    loopback_only = is_loopback(config.host)
    app = FastAPI(title="synthvg explorer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.explorer = ex
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def page(name: str, status: int = 200, **context) -> HTMLResponse:
        html = env.get_template(name).render(
            dataset=ex.dataset.url, version=ex.version, total_images=ex.total_images, **context
        )
        return HTMLResponse(html, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if loopback_only and not is_loopback(_host_name(request.headers.get("host", ""))):
            # A page elsewhere whose name resolves to 127.0.0.1 (DNS rebinding) gets nothing.
            return Response("unknown host\n", status_code=421, media_type="text/plain")
        if token is not None:
            given = request.query_params.get("token")
            if given is not None and hmac.compare_digest(given.encode(), token.encode()):
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                target = request.url.path + ("?" + urlencode(rest) if rest else "")
                response = RedirectResponse(target, status_code=303)
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
                return response
            bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            cookie = request.cookies.get(TOKEN_COOKIE, "")
            if not any(
                hmac.compare_digest(c.encode(), token.encode()) for c in (bearer, cookie) if c
            ):
                return Response(
                    "this explorer needs its token: open it once with ?token=<token>\n",
                    status_code=401,
                    media_type="text/plain",
                )
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.get("/", response_class=HTMLResponse)
    def gallery(
        request: Request,
        predicate: str = "",
        category: str = "",
        stage: str = "",
        verdict: str = "",
        label: str = "",
        errors: str = "",
        where: str = "",
        page: int = 1,
    ):
        filters = GalleryFilters(
            predicate=predicate.strip() or None,
            category=category or None,
            stage=stage or None,
            verdict=verdict or None,
            label=label.strip() or None,
            has_errors={"yes": True, "no": False}.get(errors),
            where=where.strip() or None,
        )
        result = ex.gallery(filters, page)
        params = {k: v for k, v in request.query_params.items() if k != "page" and v}
        return page_or_error(
            "gallery.html",
            result=result,
            f=filters,
            errors=errors,
            options=ex.options,
            link=lambda p: "/?" + urlencode({**params, "page": p}),
        )

    def page_or_error(name: str, **context) -> HTMLResponse:
        return page(
            name, status=400 if getattr(context.get("result"), "error", None) else 200, **context
        )

    @app.get("/image/{image_id:path}", response_class=HTMLResponse)
    def image_page(image_id: str):
        try:
            view = ex.image(image_id)
        except NotFound as e:
            return page("error.html", status=404, message=str(e))
        edit_names = {rid: texts[0] for rid, texts in view.descriptions.get("edit", {}).items()}
        stages = [s for s in STAGES if view.relations.get(s)]
        return page(
            "image.html",
            v=view,
            stages=stages,
            edit_names=edit_names,
        )

    @app.get("/file/{image_id:path}")
    def image_file(image_id: str):
        row = _row_or_404(image_id)
        if isinstance(row, Response):
            return row
        try:
            data, media = _web_image(row["file_uri"])
        except (OSError, ValueError) as e:
            return Response(
                f"image file unreadable: {e}\n", status_code=404, media_type="text/plain"
            )
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/thumb/{image_id:path}")
    def thumbnail(image_id: str):
        row = _row_or_404(image_id)
        if isinstance(row, Response):
            return row
        data = thumbs.get(image_id)
        if data is None:
            try:
                data = _thumbnail(row["file_uri"])
            except (OSError, ValueError) as e:
                return Response(
                    f"image file unreadable: {e}\n", status_code=404, media_type="text/plain"
                )
            thumbs.put(image_id, data)
        return Response(
            data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
        )

    def _row_or_404(image_id: str):
        try:
            return ex.image_row(image_id)
        except NotFound as e:
            return Response(f"{e}\n", status_code=404, media_type="text/plain")

    @app.get("/sql", response_class=HTMLResponse)
    def sql_page(q: str = ""):
        context: dict[str, Any] = {
            "q": q,
            "table": None,
            "more": False,
            "error": None,
            "seconds": None,
        }
        if q.strip():
            t0 = time.perf_counter()
            try:
                table, more = ex.sql(q, config.sql_row_cap)
            except (ReadOnlyError, QueryTimeout) as e:
                context["error"] = str(e)
            except (ValueError, duckdb.Error) as e:
                context["error"] = f"query failed: {' '.join(str(e).split())}"
            else:
                context.update(
                    columns=table.column_names,
                    rows=[list(r.values()) for r in table.to_pylist()],
                    table=table,
                    more=more,
                    seconds=time.perf_counter() - t0,
                )
        return page(
            "sql.html",
            status=400 if context["error"] else 200,
            cap=config.sql_row_cap,
            timeout=config.sql_timeout_s,
            is_image=ex.is_image_id,
            csv_link="/sql.csv?" + urlencode({"q": q}),
            **context,
        )

    @app.get("/sql.csv")
    def sql_csv(q: str = ""):
        try:
            table, more = ex.sql(q, config.csv_row_cap)
        except (ReadOnlyError, QueryTimeout) as e:
            return Response(f"{e}\n", status_code=400, media_type="text/plain")
        except (ValueError, duckdb.Error) as e:
            return Response(
                f"query failed: {' '.join(str(e).split())}\n",
                status_code=400,
                media_type="text/plain",
            )
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(table.column_names)
        for r in table.to_pylist():
            writer.writerow(["" if v is None else v for v in r.values()])
        headers = {"Content-Disposition": 'attachment; filename="synthvg-query.csv"'}
        if more:
            headers["X-Synthvg-Truncated"] = f"first {config.csv_row_cap} rows"
        return Response(buf.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)

    @app.get("/dataset", response_class=HTMLResponse)
    def dataset_page():
        info = _dataset_info()
        return page(
            "dataset.html",
            info=info,
            paper=PAPER_TABLE_1,
            prefect_ui=config.prefect_ui_url.rstrip("/") if config.prefect_ui_url else None,
        )

    @functools.lru_cache(maxsize=1)
    def _dataset_info() -> dict:  # the served version does not change: compute once
        return ex.dataset_info()

    return app


def _host_name(header: str) -> str:
    """The name in a Host header, without its port ('[::1]:8765' -> '::1')."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _web_image(uri: str) -> tuple[bytes, str]:
    """The file's bytes when a browser shows its format, else a PNG of it."""
    from synthvg.image_files import open_header, read_bytes

    data = read_bytes(uri)
    img = open_header(data, uri)
    media = WEB_FORMATS.get(img.format or "")
    if media:
        return data, media
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue(), "image/png"


def _thumbnail(uri: str) -> bytes:
    from synthvg.image_files import open_header, read_bytes

    data = read_bytes(uri)
    img = open_header(data, uri)
    img.draft("RGB", (THUMB_SIDE, THUMB_SIDE))  # JPEG: decode at 1/2..1/8 scale
    img = img.convert("RGB")
    img.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


mimetypes.add_type("text/javascript", ".js")
