"""The reader-study web app in-process (Starlette's TestClient): tokens, isolation between readers, opaque
images without path traversal, CSRF, validation (4xx and nothing changes), resume, and the bind warning."""

from __future__ import annotations

import sqlite3
import warnings

import pytest

pytest.importorskip("starlette", reason="the reader study needs the 'study' extra: pip install -e '.[study]'")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")

from starlette.testclient import TestClient  # noqa: E402

from studydata import answer_count, form_of, new_study, token_of, truth  # noqa: E402
from synthmed.study import db  # noqa: E402
from synthmed.study.app import build_app  # noqa: E402

CRITERIA = {"all": ["sharp membrane", "no artefact"], "2-cell": ["two blastomeres"]}


@pytest.fixture
def study(tmp_path):
    return new_study(tmp_path)


def client_for(made, reader: str | None = None) -> TestClient:
    c = TestClient(build_app(made.folder), base_url="http://127.0.0.1:8000")
    if reader:
        r = c.get(f"/r/{token_of(made.links[reader])}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/task"
    return c


def turing_answer(page_html: str, verdict: str = "real", confidence: str = "3", **extra) -> dict:
    return {**form_of(page_html), "verdict": verdict, "confidence": confidence, **extra}


def test_tokens_are_unguessable_and_stored_only_hashed(study):
    tokens = [token_of(link) for link in study.links.values()] + [study.admin_link.rsplit("/", 1)[1]]
    assert len(set(tokens)) == 3 and all(len(t) >= 43 for t in tokens)  # 32 random bytes, url-safe
    raw = b"".join(p.read_bytes() for p in study.folder.glob("study.sqlite*"))
    raw += (study.folder / "study.json").read_bytes()
    for t in tokens:
        assert t.encode() not in raw
    with db.connect(study.folder) as con:
        stored = {r["token_hash"] for r in con.execute("SELECT token_hash FROM readers")}
    assert stored == {db.hash_token(token_of(link)) for link in study.links.values()}


def test_the_link_sets_an_httponly_cookie_and_leaves_the_address_bar(study):
    c = client_for(study)
    r = c.get(f"/r/{token_of(study.links['r1'])}", follow_redirects=False)
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    assert r.headers["location"] == "/task"
    page = c.get("/task")
    assert page.status_code == 200 and "image 1 of 8" in page.text
    for h in ("x-frame-options", "content-security-policy", "referrer-policy", "x-content-type-options"):
        assert h in page.headers
    assert page.headers["cache-control"] == "no-store"


def test_unknown_or_missing_tokens_get_nothing(study):
    c = client_for(study)
    assert c.get("/r/" + "A" * 43, follow_redirects=False).status_code == 404
    assert c.get("/task").status_code == 401
    c.cookies.set("synthmed_reader", "not-a-token")
    assert c.get("/task").status_code == 401
    assert c.get("/admin").status_code == 403


def test_a_reader_sees_and_answers_only_their_own_tasks(study):
    r1, r2 = client_for(study, "r1"), client_for(study, "r2")
    p1, p2 = r1.get("/task").text, r2.get("/task").text
    f2 = form_of(p2)
    # r1 posts an answer to r2's task with r1's own (valid) CSRF token: refused, nothing stored
    forged = {**turing_answer(p1), "task": f2["task"], "image": f2["image"]}
    assert r1.post("/answer", data=forged).status_code == 404
    assert answer_count(study.folder) == 0
    # r2's CSRF token is useless to r1
    assert r1.post("/answer", data={**turing_answer(p1), "csrf": f2["csrf"]}).status_code == 403
    # an image that is among r2's tasks only is not served to r1
    with db.connect(study.folder) as con, db.transaction(con):
        con.execute("INSERT INTO images VALUES ('onlyForReaderTwo', 'x.png', 'real', 0, 0, '2-cell', 0, 'f')")
        con.execute("INSERT INTO tasks (reader_id, image_id, position) VALUES (2, 'onlyForReaderTwo', 99)")
    assert r1.get("/image/onlyForReaderTwo").status_code == 404
    assert client_for(study).get(f"/image/{form_of(p1)['image']}").status_code == 404  # no cookie, no image


def test_admin_sees_progress_and_readers_do_not(study):
    r1 = client_for(study, "r1")
    assert r1.post("/answer", data=turing_answer(r1.get("/task").text), follow_redirects=False).status_code == 303
    assert r1.get("/admin").status_code == 403
    admin = client_for(study)
    assert admin.get("/a/" + "x" * 43, follow_redirects=False).status_code == 404
    page = admin.get("/a/" + study.admin_link.rsplit("/", 1)[1])
    assert page.status_code == 200 and "1 of 16 answers saved" in page.text and " UTC" in page.text
    assert "synthetic" not in page.text.split("<table", 1)[1]  # progress only: no truth, no answers


def test_images_are_opaque_and_served_by_id_only(study, tmp_path):
    r1 = client_for(study, "r1")
    page = r1.get("/task").text
    image_id = form_of(page)["image"]
    img = r1.get(f"/image/{image_id}")
    assert img.status_code == 200 and img.headers["content-type"] == "image/png" and img.content[:4] == b"\x89PNG"
    files = sorted(p.name for p in (study.folder / "images").iterdir())
    assert len(files) == 8 and all(len(f) == len("x" * 16 + ".png") for f in files)
    with db.connect(study.folder) as con:
        sources = {r["id"]: r["source"] for r in con.execute("SELECT id, source FROM images")}
    # the page never names the source, and every PNG carries the same chunks (no metadata hints)
    assert "tiny" not in page and "samples" not in page and "test split" not in page
    chunk_sets = set()
    for f in files:
        data = (study.folder / "images" / f).read_bytes()
        chunks, i = [], 8
        while i < len(data):
            n = int.from_bytes(data[i:i + 4], "big")
            chunks.append(data[i + 4:i + 8])
            i += 12 + n
        chunk_sets.add(tuple(c for c in chunks if c != b"IDAT"))
    assert chunk_sets == {(b"IHDR", b"IEND")} and set(sources.values()) == {"real", "tiny"}


@pytest.mark.parametrize("path", [
    "/image/../study.sqlite", "/image/..%2fstudy.sqlite", "/image/%2e%2e%2fstudy.sqlite", "/image/..%2F..%2Fetc%2Fpasswd",
    "/image/....//study.sqlite", "/image/%2e%2e/%2e%2e/study.json", "/image/study.sqlite", "/image/images%2f..%2fstudy.sqlite",
    "/static/../study.sqlite", "/static/%2e%2e/study.sqlite", "/static/..%2f..%2fstudy.sqlite",
    "/image/..%5cstudy.sqlite", "/image/%00", "/images/x.png",
])
def test_no_path_traversal(study, path):
    r1 = client_for(study, "r1")
    r = r1.get(path)
    assert r.status_code in (400, 404)
    assert b"SQLite format" not in r.content and b"per_source" not in r.content and b"root:" not in r.content


def test_an_image_file_name_in_the_database_cannot_point_outside_images(study):
    r1 = client_for(study, "r1")
    image_id = form_of(r1.get("/task").text)["image"]
    with db.connect(study.folder) as con, db.transaction(con):
        con.execute("UPDATE images SET file = '../study.sqlite' WHERE id = ?", (image_id,))
    r = r1.get(f"/image/{image_id}")
    assert r.status_code == 404 and b"SQLite" not in r.content


def test_csrf_and_origin_are_checked(study):
    r1 = client_for(study, "r1")
    page = r1.get("/task").text
    good = turing_answer(page)
    for bad in ({**good, "csrf": ""}, {k: v for k, v in good.items() if k != "csrf"}, {**good, "csrf": "0" * 64}):
        assert r1.post("/answer", data=bad).status_code == 403
    assert r1.post("/answer", data=good, headers={"Origin": "http://evil.example"}).status_code == 403
    assert r1.post("/answer", data=good, headers={"Origin": "null"}).status_code == 403
    assert answer_count(study.folder) == 0
    ok = r1.post("/answer", data=good, headers={"Origin": "http://127.0.0.1:8000"}, follow_redirects=False)
    assert ok.status_code == 303 and answer_count(study.folder) == 1
    assert r1.get("/answer").status_code == 405  # no answering by GET


@pytest.mark.parametrize("change, status", [
    ({"image": "AAAAAAAAAAAAAAAA"}, 400), ({"image": "../../etc/passwd"}, 400), ({"image": ""}, 400),
    ({"task": "abc"}, 422), ({"task": "-1"}, 422), ({"task": "999999"}, 404),
    ({"confidence": "0"}, 422), ({"confidence": "6"}, 422), ({"confidence": "3.5"}, 422), ({"confidence": ""}, 422),
    ({"verdict": "maybe"}, 422), ({"verdict": ""}, 422), ({"client_ms": "-5"}, 422), ({"client_ms": "soon"}, 422),
])
def test_invalid_fields_get_a_4xx_and_change_nothing(study, change, status):
    r1 = client_for(study, "r1")
    page = r1.get("/task").text
    before = dict(truth(study.folder))
    r = r1.post("/answer", data={**turing_answer(page), **change})
    assert r.status_code == status
    assert answer_count(study.folder) == 0 and truth(study.folder) == before
    assert form_of(r1.get("/task").text)["task"] == form_of(page)["task"]  # still on the same image


def test_an_image_of_another_task_is_refused(study):
    r1 = client_for(study, "r1")
    page = r1.get("/task").text
    with db.connect(study.folder) as con:
        other = con.execute("SELECT image_id FROM tasks WHERE reader_id = 1 AND id != ? LIMIT 1",
                            (int(form_of(page)["task"]),)).fetchone()[0]
    assert r1.post("/answer", data={**turing_answer(page), "image": other}).status_code == 400
    assert answer_count(study.folder) == 0


def test_a_repeated_answer_is_refused_and_the_first_is_kept(study):
    r1 = client_for(study, "r1")
    page = r1.get("/task").text
    assert r1.post("/answer", data=turing_answer(page, "synthetic", "5"), follow_redirects=False).status_code == 303
    again = r1.post("/answer", data=turing_answer(page, "real", "1"))
    assert again.status_code == 409
    with db.connect(study.folder) as con:
        rows = con.execute("SELECT says_synthetic, confidence FROM answers").fetchall()
    assert [tuple(r) for r in rows] == [(1, 5)]


def test_order_is_per_reader_and_answering_resumes_where_the_reader_stopped(study):
    r1 = client_for(study, "r1")
    client_for(study, "r2")  # signs reader r2 in: their task order exists from then on
    with db.connect(study.folder) as con:
        orders = [[r[0] for r in con.execute("SELECT image_id FROM tasks WHERE reader_id = ? ORDER BY position", (i,))]
                  for i in (1, 2)]
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]  # same images, own order
    seen = []
    for _ in range(3):
        page = r1.get("/task").text
        assert r1.get("/task").text.count(form_of(page)["image"]) >= 1  # a reload shows the same image
        seen.append(form_of(page)["image"])
        r1.post("/answer", data=turing_answer(page))
    assert seen == orders[0][:3]
    # a new session (another browser) with the same link resumes at image 4
    again = client_for(study, "r1")
    page = again.get("/task").text
    assert "image 4 of 8" in page and form_of(page)["image"] == orders[0][3]
    for _ in range(5):
        again.post("/answer", data=turing_answer(again.get("/task").text))
    done = again.get("/task")
    assert done.status_code == 200 and "All 8 images are answered" in done.text
    with db.connect(study.folder) as con:
        times = con.execute("SELECT COUNT(*) FROM answers WHERE seconds IS NOT NULL AND seconds >= 0").fetchone()[0]
    assert times == 8


def test_plausibility_form_scores_all_criteria(tmp_path):
    made = new_study(tmp_path, mode="plausibility", criteria=CRITERIA)
    c = client_for(made, "r1")
    page = c.get("/task").text
    assert "sharp membrane" in page and 'name="criterion"' in page and "real or synthetic" not in page
    with db.connect(made.folder) as con:
        cls = con.execute("SELECT class_name FROM images WHERE id = ?", (form_of(page)["image"],)).fetchone()[0]
    n = 3 if cls == "2-cell" else 2
    bad = {**form_of(page), "criterion": [str(n)]}
    assert c.post("/answer", data=bad).status_code == 422
    assert c.post("/answer", data={**form_of(page), "criterion": ["0", "0"]}).status_code == 422
    assert c.post("/answer", data={**form_of(page), "note": "x" * 2001}).status_code == 422
    assert answer_count(made.folder) == 0
    ok = c.post("/answer", data={**form_of(page), "criterion": [str(i) for i in range(n)], "note": "fine"},
                follow_redirects=False)
    assert ok.status_code == 303
    page = c.get("/task").text
    assert c.post("/answer", data={**form_of(page), "criterion": ["0"]}, follow_redirects=False).status_code == 303
    with db.connect(made.folder) as con:
        rows = [tuple(r) for r in con.execute("SELECT plausible, criteria_met, note FROM answers ORDER BY task_id")]
    assert rows[0] == (1, str(list(range(n))).replace(" ", "").replace(",", ", "), "fine") and rows[1][:2] == (0, "[0]")


def test_a_database_written_by_the_app_is_in_wal_mode(study):
    r1 = client_for(study, "r1")
    r1.post("/answer", data=turing_answer(r1.get("/task").text))
    con = sqlite3.connect(study.folder / "study.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_serve_binds_localhost_and_warns_when_exposed(study, monkeypatch, capsys):
    import uvicorn

    from synthmed.study import app as app_module

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app_module.serve(study.folder)
        assert calls[-1]["host"] == "127.0.0.1" and calls[-1]["access_log"] is False and not caught
        app_module.serve(study.folder, host="0.0.0.0", port=8123)
    assert calls[-1]["host"] == "0.0.0.0" and calls[-1]["port"] == 8123
    assert len(caught) == 1 and "exposes the study" in str(caught[0].message)


def test_the_class_can_be_hidden_in_turing_mode(tmp_path):
    made = new_study(tmp_path, show_class=False)
    page = client_for(made, "r1").get("/task").text
    assert 'id="class-name"' not in page and "-cell" not in page
    shown = client_for(new_study(tmp_path / "b"), "r1").get("/task").text
    assert 'id="class-name"' in shown


def test_a_port_in_use_is_a_one_line_error(study):
    import socket

    from synthmed.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ValueError, match=f"--port {port}: cannot listen"):
            from synthmed.study.app import serve

            serve(study.folder, port=port)
        assert main(["study", "serve", str(study.folder), "--port", str(port)]) == 2


def test_help_on_every_study_verb(capsys):
    from synthmed.cli import main

    for verb in ("create", "serve", "analyze", "link"):
        with pytest.raises(SystemExit) as e:
            main(["study", verb, "--help"])
        assert e.value.code == 0 and "usage: synthmed study" in capsys.readouterr().out
