"""The reader-study server as readers meet it: uvicorn in a subprocess on a free 127.0.0.1 port. Killing it
(SIGKILL) in the middle of a reader's study loses no committed answer; 20 readers answering at once lose or
duplicate nothing."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="the reader study needs the 'study' extra: pip install -e '.[study]'")
httpx = pytest.importorskip("httpx")

from studydata import form_of, free_port, new_study, start_server, stop, token_of  # noqa: E402
from synthmed.study import db  # noqa: E402


def signed_in(port: int, link: str) -> httpx.Client:
    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    assert c.get(f"/r/{token_of(link)}").status_code == 303
    return c


def stored(folder: Path) -> dict[int, tuple]:
    with db.connect(folder) as con:
        return {r[0]: tuple(r[1:]) for r in con.execute("SELECT task_id, says_synthetic, confidence FROM answers")}


def test_killing_the_server_mid_study_keeps_every_committed_answer(tmp_path):
    made = new_study(tmp_path, readers=("r1",))
    port = free_port()
    server = start_server(made.folder, port)
    committed = {}
    try:
        c = signed_in(port, made.links["r1"])
        for k in range(3):
            form = form_of(c.get("/task").text)
            r = c.post("/answer", data={**form, "verdict": "synthetic" if k % 2 else "real", "confidence": str(k + 2)})
            assert r.status_code == 303
            committed[int(form["task"])] = (k % 2, k + 2)
        waiting = form_of(c.get("/task").text)  # the reader looks at image 4 ...
        os.kill(server.pid, signal.SIGKILL)  # ... when the server dies without any chance to clean up
        server.wait(timeout=30)
    finally:
        stop(server)
    assert (made.folder / "study.sqlite-wal").exists()  # the answers were in the WAL, not checkpointed
    assert stored(made.folder) == committed
    server = start_server(made.folder, port)
    try:
        page = c.get("/task").text  # same browser session, same cookie
        assert "image 4 of 8" in page and form_of(page)["task"] == waiting["task"]
        while "image" in (page := c.get("/task").text) and 'name="task"' in page:
            form = form_of(page)
            assert c.post("/answer", data={**form, "verdict": "real", "confidence": "1"}).status_code == 303
            committed[int(form["task"])] = (0, 1)
        assert "All 8 images are answered" in page
    finally:
        stop(server)
        c.close()
    assert stored(made.folder) == committed and len(committed) == 8


def test_twenty_concurrent_readers_lose_and_duplicate_nothing(tmp_path):
    readers = tuple(f"reader{i:02d}" for i in range(20))
    made = new_study(tmp_path, readers=readers, per_source=5)  # 10 images each: 200 answers
    port = free_port()
    server = start_server(made.folder, port)
    sent: dict[str, dict[int, tuple]] = {r: {} for r in readers}
    errors: list[str] = []
    start = threading.Barrier(len(readers))

    def read(reader: str, k: int) -> None:
        try:
            c = signed_in(port, made.links[reader])
            try:
                start.wait(timeout=60)
                for step in range(25):  # bounded: 10 answers + a duplicate every third one + the final page
                    page = c.get("/task").text
                    if 'name="task"' not in page:
                        break
                    form = form_of(page)
                    answer = {**form, "verdict": "synthetic" if (step + k) % 2 else "real",
                              "confidence": str(1 + (step + k) % 5)}
                    r = c.post("/answer", data=answer)
                    if r.status_code != 303:
                        errors.append(f"{reader}: {r.status_code} on step {step}")
                        return
                    sent[reader][int(form["task"])] = ((step + k) % 2, 1 + (step + k) % 5)
                    if step % 3 == 0 and c.post("/answer", data={**answer, "confidence": "5"}).status_code != 409:
                        errors.append(f"{reader}: a repeated answer was not refused")
            finally:
                c.close()
        except Exception as e:  # noqa: BLE001 -- reported below with the reader's name
            errors.append(f"{reader}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=read, args=(r, k)) for k, r in enumerate(readers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        assert not any(t.is_alive() for t in threads), "a reader thread hung"
    finally:
        stop(server)
    assert errors == []
    expected = {task: value for r in readers for task, value in sent[r].items()}
    assert len(expected) == 200 and all(len(sent[r]) == 10 for r in readers)
    assert stored(made.folder) == expected
    with db.connect(made.folder) as con:
        per_reader = con.execute("SELECT t.reader_id, COUNT(*) FROM answers a JOIN tasks t ON t.id = a.task_id "
                                 "GROUP BY t.reader_id").fetchall()
    assert sorted(n for _, n in per_reader) == [10] * 20
