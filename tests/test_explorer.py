"""`synthvg serve`: every route over HTTP (FastAPI's TestClient), the security cases (escaping,
image ids only, the SQL sandbox, the token, the Host check), and a real uvicorn server."""

from __future__ import annotations

import html
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from explorer_dataset import FILES, XSS_LABEL, XSS_PREDICATE, A, B, C, build_explorer_dataset
from fastapi.testclient import TestClient
from markupsafe import escape
from typer.testing import CliRunner

import synthvg
from synthvg.cli import app as cli_app
from synthvg.explorer import ExplorerConfig, check_bind, is_loopback
from synthvg.explorer.app import TOKEN_COOKIE, create_app
from synthvg.explorer.data import IMAGE_VIEWS, Explorer, NotFound, check_image_id
from synthvg.storage import connect, fetch_dicts

SRC = str(Path(synthvg.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("explorer") / "root"
    build_explorer_dataset(root)
    return root


@pytest.fixture(scope="module")
def explorer(root):
    ex = Explorer(ExplorerConfig(root=str(root), page_size=2, sql_row_cap=5, sql_timeout_s=1.0))
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def client(explorer):
    return TestClient(create_app(explorer.config, explorer), base_url="http://127.0.0.1")


class Tags(HTMLParser):
    """Every start tag of a page, with its attributes: what a browser would build."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def assert_inert(text: str) -> None:
    """No script but ours, no event handler, no image from nowhere: injected markup stayed text."""
    for tag, attrs in Tags(text).tags:
        if tag == "script":
            assert attrs == {"src": "/static/explorer.js", "defer": None}, attrs
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        assert not (tag == "img" and attrs.get("src") == "x"), attrs


def gallery_ids(text: str) -> list[str]:
    return [html.unescape(i) for i in re.findall(r'<a class="card" href="/image/([^"]+)"', text)]


def test_gallery_pages_counts_and_filters(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<b>3</b> of 3 images match" in r.text
    assert gallery_ids(r.text) == [A, B]  # page size 2, in image_id order
    assert gallery_ids(client.get("/?page=2").text) == [C]
    assert gallery_ids(client.get("/?page=99").text) == [C]  # clamped to the last page
    cases = {
        "predicate=" + XSS_PREDICATE: [A],
        "category=interactional": [A],
        "stage=robin": [A],
        "stage=teacher": [A, B],
        "verdict=dropped": [A],
        "verdict=dropped&predicate=near": [],
        "predicate=no such predicate": [],
        "label=no such label&stage=seed": [],
        "label=" + XSS_LABEL: [A],
        "label=cat": [B],
        "errors=yes": [B],
        "errors=no": [A, C],
        "where=coco_id = 6818": [C],
        "where=split = 'train2017' AND width > 0&errors=yes": [B],
    }
    for query, expected in cases.items():
        k, _, v = query.partition("=")
        params = dict(p.split("=", 1) for p in query.split("&"))
        r = client.get("/", params=params)
        assert r.status_code == 200, (query, r.text)
        assert gallery_ids(r.text) == expected[:2], query
        assert f"<b>{len(expected)}</b> of 3 images match" in r.text, query
    r = client.get("/", params={"errors": "yes"})
    assert "1 regions" in r.text and "1 relations in them" in r.text  # B: 1 region, 1 relation


def test_gallery_where_is_sandboxed(client, root):
    before = sorted(p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file())
    for where, says in [
        ("true; DELETE FROM images", "does not parse"),
        ("true) UNION SELECT 'x' FROM images; DELETE FROM images; SELECT (1", "one statement"),
        ("n_errors > 0", "n_errors"),  # resolves against images only
        ("length((SELECT content FROM read_text('/etc/hostname'))) > 0", "disabled"),
        ("no_such_column = 1", "no_such_column"),
        ("enable_profiling() IS NULL", "refused"),
    ]:
        r = client.get("/", params={"where": where})
        assert r.status_code == 400, where
        assert says in html.unescape(r.text), (where, r.text)
        assert gallery_ids(r.text) == []
    assert before == sorted(p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file())


def test_image_page_shows_masks_graphs_edits_verdicts_errors_generations(client):
    r = client.get(f"/image/{A}")
    assert r.status_code == 200
    tags = Tags(r.text).tags
    regions = [a for t, a in tags if t == "g" and "region" in a.get("class", "")]
    assert [g["data-rid"] for g in regions] == ["0", "1", "2"]
    paths = [a["d"] for t, a in tags if t == "path"]
    assert len(paths) == 3 and all(p.startswith("M") and p.count("z") >= 2 for p in paths)
    toggles = [a["data-toggle-rid"] for t, a in tags if t == "input" and "data-toggle-rid" in a]
    assert toggles == ["0", "1", "2"]
    stages = [a["id"] for t, a in tags if t == "div" and a.get("class") == "stage"]
    assert stages == ["stage-seed", "stage-teacher", "stage-robin", "stage-edit"]
    text = html.unescape(r.text)
    # verdicts with their reasons, and the relation ends hover works on
    assert "rule:left_of (-40): subject centre is 40 px right of the object's" in text
    rels = [a for t, a in tags if t == "li" and "rel" in a.get("class", "").split()]
    assert ("v-dropped" in rels[2]["class"]) and (rels[2]["data-s"], rels[2]["data-o"]) == (
        "1",
        "2",
    )
    # the editor's changes: applied rename, rejected add with its reason; edit names in its graph
    assert "already_present" in text and "puppy" in text and "dog" in text
    assert re.search(r"2 puppy\s*</span>\s*<b class=\"pred\">next to", r.text)
    # Robin's raw generation, with what the parser dropped
    assert "region1 HOLDING region2" in text and "unknown region id region9" in text
    assert f'href="/image/{B}"' in r.text  # next image
    page_b = client.get(f"/image/{B}")
    assert "bad_annotation" in page_b.text and "instances.json#annotation=7" in page_b.text
    assert f'href="/image/{A}"' in page_b.text and f'href="/image/{C}"' in page_b.text
    bare = client.get(f"/image/{C}")
    assert bare.status_code == 200 and "No relations for this image" in bare.text


def test_every_page_renders_model_and_annotation_strings_as_text(client):
    pages = [
        client.get(f"/image/{A}"),
        client.get(f"/image/{B}"),
        client.get("/"),
        client.get("/", params={"predicate": XSS_PREDICATE}),
        client.get(
            "/sql", params={"q": "SELECT predicate, 'x' AS \"<script>c</script>\" FROM relations"}
        ),
        client.get("/sql", params={"q": "SELECT label FROM regions"}),
        client.get("/dataset"),
        client.get("/image/<script>alert(1)</script>"),
    ]
    for r in pages:
        assert_inert(r.text)
        assert "<script>alert" not in r.text and "<img src=x" not in r.text
    image = pages[0].text
    assert escape(XSS_PREDICATE) in image  # shown, as text
    assert escape(XSS_LABEL) in image
    assert escape(XSS_LABEL) in pages[5].text and escape(XSS_PREDICATE) in pages[4].text
    csp = pages[0].headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert pages[0].headers["x-content-type-options"] == "nosniff"


def test_image_routes_take_dataset_ids_only(client):
    jpeg = client.get(f"/file/{A}")
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    assert jpeg.content == FILES[A].read_bytes()
    thumb = client.get(f"/thumb/{A}")
    assert (
        thumb.status_code == 200
        and thumb.content[:2] == b"\xff\xd8"
        and len(thumb.content) < len(jpeg.content)
    )
    for route in ("/image/", "/file/", "/thumb/"):
        for bad in (
            "..%2F..%2F..%2Fetc%2Fpasswd",
            "%2Fetc%2Fpasswd",
            "/etc/passwd",
            "%2e%2e/%2e%2e/etc/passwd",
            str(FILES[A]),
            "coco:17627%2F..%2Fcoco:37777",
            "coco:999",
            "C:%5Cwindows%5Cwin.ini",
        ):
            r = client.get(route + bad)
            assert r.status_code == 404, (route, bad, r.status_code)
            assert "root:" not in r.text and b"\xff\xd8" != r.content[:2]
    for bad in ("../x", "/etc/passwd", "~/x", "C:\\x", "a\x00b", ""):
        with pytest.raises(NotFound):
            check_image_id(bad)
    assert check_image_id("vg:12") == "vg:12"


def test_narrowed_image_queries_equal_the_views(explorer, root):
    """The per-image file index reads exactly what `SELECT * FROM view WHERE image_id = ?` does."""
    con = connect(str(root))
    try:
        for image_id in (A, B, C, "coco:1"):
            for view in IMAGE_VIEWS:
                expected = fetch_dicts(con, f"SELECT * FROM {view} WHERE image_id = ?", [image_id])
                got = explorer.view_rows(view, image_id)
                key = lambda r: repr(sorted(r.items()))  # noqa: E731
                assert sorted(got, key=key) == sorted(expected, key=key), (image_id, view)
    finally:
        con.close()


def test_sql_page_read_only_capped_timed_csv_and_links(client, root):
    r = client.get(
        "/sql", params={"q": "SELECT image_id, count(*) AS n FROM relations GROUP BY 1 ORDER BY 1"}
    )
    assert r.status_code == 200
    assert f'<a href="/image/{A}">{A}</a>' in r.text and f'<a href="/image/{B}">{B}</a>' in r.text
    r = client.get("/sql", params={"q": "SELECT * FROM range(100)"})
    assert "5 row(s) shown: the first 5, more exist" in r.text
    assert r.text.count("<tr>") == 6  # header + 5
    before = sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file())
    for q, says in [
        ("DELETE FROM images", "refused"),
        ("SELECT 1; SELECT 2", "one statement"),
        ("COPY images TO 'x.csv'", "refused"),
        ("SELECT * FROM read_text('/etc/hostname')", "disabled"),
        ("ATTACH 'x.db'", "refused"),
        ("SET enable_external_access = true", "refused"),
        ("SELECT count(*) FROM range(10000000000) a, range(1000) b", "time limit"),
    ]:
        r = client.get("/sql", params={"q": q})
        assert r.status_code == 400, q
        assert says in html.unescape(r.text), (q, r.text[-600:])
    assert before == sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file())
    csv = client.get("/sql.csv", params={"q": "SELECT image_id, width FROM images ORDER BY 1"})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv.headers["content-disposition"]
    assert csv.text.splitlines()[0] == "image_id,width" and csv.text.splitlines()[1].startswith(
        A + ","
    )
    assert client.get("/sql.csv", params={"q": "DROP VIEW images"}).status_code == 400
    assert client.get("/sql").status_code == 200


def test_dataset_page(client):
    r = client.get("/dataset")
    assert r.status_code == 200
    text = html.unescape(r.text)
    for words in ("SVG-FULL", "this dataset", "relations per category", "Versions", "rule:left_of"):
        assert words in text, words
    tags = Tags(r.text).tags
    assert [a for t, a in tags if t == "meter"]  # the charts
    assert "No run manifest" in text  # committed by hand: no run record


def test_static_files_and_no_cdn(client):
    js = client.get("/static/explorer.js")
    assert js.status_code == 200 and "data-toggle-rid" in js.text
    assert client.get("/static/explorer.css").status_code == 200
    for page in (
        client.get("/"),
        client.get(f"/image/{A}"),
        client.get("/sql"),
        client.get("/dataset"),
    ):
        for _, attrs in Tags(page.text).tags:
            for key in ("src", "href"):
                assert not str(attrs.get(key) or "").startswith(("http:", "https:", "//")), attrs


def test_token_and_host_checks(explorer):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    with pytest.raises(PermissionError, match="needs a token"):
        check_bind(ExplorerConfig(root="x", host="0.0.0.0"))
    check_bind(ExplorerConfig(root="x", host="0.0.0.0", token="s3cret"))
    check_bind(ExplorerConfig(root="x"))

    public = ExplorerConfig(root=explorer.config.root, host="0.0.0.0", token="s3cret")
    c = TestClient(create_app(public, explorer), base_url="http://example.org")
    assert c.get("/").status_code == 401
    assert c.get("/", params={"token": "wrong"}).status_code == 401
    assert c.get(f"/file/{A}").status_code == 401
    assert c.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    r = c.get("/sql", params={"token": "s3cret", "q": "SELECT 1"}, follow_redirects=False)
    assert r.status_code == 303 and "token" not in r.headers["location"]
    assert r.headers["location"] == "/sql?q=SELECT+1"
    assert TOKEN_COOKIE in r.headers["set-cookie"] and "httponly" in r.headers["set-cookie"].lower()
    page = c.get("/dataset")  # the cookie now carries it
    assert page.status_code == 200 and "s3cret" not in page.text

    local = TestClient(create_app(explorer.config, explorer), base_url="http://evil.example")
    assert local.get("/").status_code == 421  # a rebound name for 127.0.0.1 gets nothing
    for host in ("localhost:8765", "127.0.0.1", "[::1]:8765"):
        assert local.get("/", headers={"host": host}).status_code == 200, host


def test_cli_refuses_a_public_bind_without_a_token(root):
    result = CliRunner().invoke(cli_app, ["serve", "--root", str(root), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "needs a token" in result.output
    result = CliRunner().invoke(cli_app, ["serve", "--root", str(root / "nope")])
    assert result.exit_code == 2 and "not a synthvg dataset" in result.output


def test_help_imports_no_web_stack():
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "synthvg.cli", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=120,
    )
    assert proc.returncode == 0 and "serve" in proc.stdout
    mods = {
        m.split(".")[0] for m in re.findall(r"^import time:.*\|\s*([\w.]+)$", proc.stderr, re.M)
    }
    assert not mods & {"fastapi", "uvicorn", "starlette", "jinja2", "prefect"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_synthvg_serve_answers_over_real_http(root):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "synthvg.cli", "serve", "--root", str(root), "--port", str(port)],
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, body = time.monotonic() + 60, None
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/image/{A}", timeout=5) as r:
                    body = r.read().decode()
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stdout.read().decode()
                time.sleep(0.3)
        assert body is not None and 'id="overlay"' in body
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_dataset_card_links_the_explorer_when_configured(root):
    from synthvg.flows.report import EXPLORER_URL_ENV, _card, drop_reasons
    from synthvg.stats import compute_stats
    from synthvg.storage import Dataset

    ds = Dataset(str(root))
    args = (ds, [], compute_stats(ds), drop_reasons(ds), [])
    figures = {f: f for f in ("categories.png", "predicates.png", "objects.png")}
    card = _card("t", *args, figures, None, "http://127.0.0.1:8765/")
    assert "[explorer](http://127.0.0.1:8765/)" in card
    assert "](http" not in _card("t", *args, figures, None, None)
    assert EXPLORER_URL_ENV == "SYNTHVG_EXPLORER_URL"


def test_image_page_of_a_real_build_with_the_editor(edit_build):
    """A pipeline build (rule teacher, filters, scripted SG-EDIT editor): an edited image's page
    shows its edit graph beside the teacher's, and every edit the log holds for it."""
    cfg, _, _ = edit_build
    con = connect(cfg.out)
    try:
        (image_id, n_edits), *_ = con.execute(
            "SELECT image_id, count(*) FROM edits GROUP BY 1 ORDER BY 2 DESC, 1"
        ).fetchall()
        stages = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT stage FROM relations WHERE image_id = ? ORDER BY 1", [image_id]
            ).fetchall()
        ]
    finally:
        con.close()
    ex = Explorer(ExplorerConfig(root=cfg.out))
    try:
        r = TestClient(create_app(ex.config, ex), base_url="http://127.0.0.1").get(
            f"/image/{image_id}"
        )
    finally:
        ex.close()
    assert r.status_code == 200
    tags = Tags(r.text).tags
    shown = [
        a["id"].removeprefix("stage-") for t, a in tags if t == "div" and a.get("class") == "stage"
    ]
    assert sorted(shown) == stages and "edit" in shown
    edit_rows = [a for t, a in tags if t == "tr" and a.get("class") in ("applied", "rejected")]
    assert len(edit_rows) == n_edits
    assert_inert(r.text)


def test_an_empty_root_and_explain(tmp_path, client):
    from synthvg.storage import Dataset

    Dataset(tmp_path / "empty").init()
    ex = Explorer(ExplorerConfig(root=str(tmp_path / "empty")))
    try:
        c = TestClient(create_app(ex.config, ex), base_url="http://127.0.0.1")
        for url in (
            "/",
            "/?category=spatial&predicate=on",
            "/?where=width > 1",
            "/dataset",
            "/sql?q=SELECT+count(*)+FROM+relations",
        ):
            r = c.get(url)
            assert r.status_code == 200, (url, r.text[-500:])
        assert "<b>0</b> of 0 images match" in c.get("/").text
        assert c.get(f"/image/{A}").status_code == 404
    finally:
        ex.close()
    r = client.get("/sql", params={"q": "EXPLAIN SELECT count(*) FROM relations"})
    assert r.status_code == 200 and "physical_plan" in r.text


def test_dataset_page_links_runs_to_their_prefect_flow_runs(tmp_path, monkeypatch):
    import prefect  # noqa: F401  (the build runs inside Prefect: it is imported)

    from synthvg.pipeline import _flow_run_id
    from synthvg.schemas import RunManifest
    from synthvg.storage.dataset import utcnow

    assert _flow_run_id() is None  # outside a flow run
    monkeypatch.setenv("PREFECT__RUNTIME__FLOW_RUN__ID", "0f0e0d0c-aaaa-bbbb-cccc-000000000001")
    flow_run = _flow_run_id()
    assert flow_run == "0f0e0d0c-aaaa-bbbb-cccc-000000000001"
    ds = build_explorer_dataset(tmp_path / "root")
    common = dict(name="t", status="completed", started_at=utcnow(), synthvg_version="0", config={})
    ds.write_run(RunManifest(run_id="r1", prefect_flow_run_id=flow_run, **common))
    ds.write_run(RunManifest(run_id="r2", **common))
    ex = Explorer(
        ExplorerConfig(root=str(tmp_path / "root"), prefect_ui_url="http://127.0.0.1:4200/")
    )
    try:
        r = TestClient(create_app(ex.config, ex), base_url="http://127.0.0.1").get("/dataset")
    finally:
        ex.close()
    assert f'href="http://127.0.0.1:4200/runs/flow-run/{flow_run}"' in r.text
    assert r.text.count("/runs/flow-run/") == 1 and "not recorded" in r.text  # r2: none


def test_a_file_uri_that_is_not_an_image_is_not_served(tmp_path):
    from synthvg.schemas import ImageRecord, to_table
    from synthvg.storage import Dataset
    from synthvg.storage.dataset import utcnow

    secret = tmp_path / "secret.txt"
    secret.write_text("not for visitors\n")
    ds = Dataset(tmp_path / "root")
    ds.init()
    image = ImageRecord(
        image_id="x:1", sources=["x"], file_uri=str(secret), width=4, height=3, content_hash=""
    )
    ds.commit_shard(
        "seeds",
        0,
        "fp",
        {"images": to_table(ImageRecord, [image])},
        run_id="r",
        image_count=1,
        started_at=utcnow(),
    )
    ex = Explorer(ExplorerConfig(root=str(tmp_path / "root")))
    try:
        c = TestClient(create_app(ex.config, ex), base_url="http://127.0.0.1")
        for route in ("/file/x:1", "/thumb/x:1"):
            r = c.get(route)
            assert r.status_code == 404 and "not for visitors" not in r.text
        assert c.get("/image/x:1").status_code == 200
    finally:
        ex.close()
