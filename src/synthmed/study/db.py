"""The study database: one SQLite file in WAL mode, the only place answers live.

Tables::

    meta     key -> JSON value: mode, criteria, sources, seed, the CSRF secret, the admin token's hash
    readers  name, hash of the private token (the token itself is never stored), created_at
    images   opaque id, file under images/, truth (source, synthetic or not, class), where it came from
    tasks    one (reader, image) pair at a position of that reader's order; shown_at = first display
    answers  at most one per task (the task id is the primary key), written in one transaction

Every write is a short ``BEGIN IMMEDIATE`` transaction with ``synchronous=FULL``: when the server
has answered a POST, the answer is on disk, so killing the server loses nothing that was committed;
a second answer to the same task hits the primary key and changes nothing. Each request opens its own
connection (cheap for SQLite), so concurrent readers never share a cursor.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from pathlib import Path

DB_NAME = "study.sqlite"
SCHEMA_VERSION = 1
# 32 random bytes: far beyond guessing, and short enough for a link in an e-mail
TOKEN_BYTES = 32
# opaque image ids: random, so they say nothing about the source, class or order of creation
IMAGE_ID_BYTES = 12

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE readers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE images (
    id TEXT PRIMARY KEY,
    file TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    synthetic INTEGER NOT NULL CHECK (synthetic IN (0, 1)),
    class_index INTEGER NOT NULL,
    class_name TEXT NOT NULL,
    origin_index INTEGER NOT NULL,
    fingerprint TEXT NOT NULL
);
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    reader_id INTEGER NOT NULL REFERENCES readers(id),
    image_id TEXT NOT NULL REFERENCES images(id),
    position INTEGER NOT NULL,
    shown_at REAL,
    UNIQUE (reader_id, position),
    UNIQUE (reader_id, image_id)
);
CREATE TABLE answers (
    task_id INTEGER PRIMARY KEY REFERENCES tasks(id),
    says_synthetic INTEGER CHECK (says_synthetic IN (0, 1)),
    confidence INTEGER CHECK (confidence BETWEEN 1 AND 5),
    plausible INTEGER CHECK (plausible IN (0, 1)),
    criteria_met TEXT,
    note TEXT,
    client_ms INTEGER,
    answered_at REAL NOT NULL,
    seconds REAL
);
CREATE INDEX tasks_by_reader ON tasks (reader_id, position);
"""


def hash_token(token: str) -> str:
    """SHA-256 of a token. The tokens are 256 random bits, so a fast hash is enough: nothing in the
    database lets anyone rebuild a link (a slow password hash guards guessable secrets, not these)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def new_image_id() -> str:
    return secrets.token_urlsafe(IMAGE_ID_BYTES)


def connect(folder: str | Path) -> sqlite3.Connection:
    """A connection to ``folder``'s study database: WAL (readers never block the writer), full
    fsync on commit, foreign keys on, and a generous busy timeout for concurrent writers."""
    path = Path(folder) / DB_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a study folder (no {DB_NAME}); create one with `synthmed study create`")
    return _open(path)


def _open(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA foreign_keys=ON")
    con.execute("PRAGMA busy_timeout=30000")
    return con


def create(folder: str | Path) -> sqlite3.Connection:
    path = Path(folder) / DB_NAME
    if path.exists():
        raise FileExistsError(f"{path} exists: a study folder is written once; pick a new --to folder")
    con = _open(path)
    con.executescript(SCHEMA)
    set_meta(con, "schema_version", SCHEMA_VERSION)
    return con


class transaction:
    """``with transaction(con):`` one BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any error)."""

    def __init__(self, con: sqlite3.Connection):
        self.con = con

    def __enter__(self):
        self.con.execute("BEGIN IMMEDIATE")
        return self.con

    def __exit__(self, exc_type, exc, tb):
        self.con.execute("ROLLBACK" if exc_type else "COMMIT")
        return False


def set_meta(con: sqlite3.Connection, key: str, value) -> None:
    con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))


def get_meta(con: sqlite3.Connection, key: str, default=None):
    row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return default if row is None else json.loads(row["value"])


def all_meta(con: sqlite3.Connection) -> dict:
    return {r["key"]: json.loads(r["value"]) for r in con.execute("SELECT key, value FROM meta")}


# --------------------------------------------------------------------------- readers and tokens


def add_reader(con: sqlite3.Connection, name: str) -> tuple[int, str]:
    """A new reader; returns (id, token). The token is shown once and only its hash is kept."""
    token = new_token()
    cur = con.execute("INSERT INTO readers (name, token_hash, created_at) VALUES (?, ?, ?)",
                      (name, hash_token(token), time.time()))
    return int(cur.lastrowid), token


def reissue_token(con: sqlite3.Connection, name: str) -> str:
    """A fresh token for reader ``name``; the old link stops working. Answers are kept."""
    token = new_token()
    with transaction(con):
        cur = con.execute("UPDATE readers SET token_hash = ? WHERE name = ?", (hash_token(token), name))
    if cur.rowcount != 1:
        names = [r["name"] for r in con.execute("SELECT name FROM readers ORDER BY id")]
        raise ValueError(f"no reader {name!r} in this study (readers: {', '.join(names)})")
    return token


def reader_for_token(con: sqlite3.Connection, token: str | None) -> sqlite3.Row | None:
    if not token or len(token) > 200:
        return None
    return con.execute("SELECT id, name FROM readers WHERE token_hash = ?", (hash_token(token),)).fetchone()


def is_admin_token(con: sqlite3.Connection, token: str | None) -> bool:
    stored = get_meta(con, "admin_token_hash")
    return bool(token) and len(token) <= 200 and stored is not None and hmac.compare_digest(hash_token(token), stored)


def csrf_token(con: sqlite3.Connection, reader_id: int) -> str:
    """The form token of one reader: an HMAC of the reader id under the study's secret, so a page
    on another site cannot forge it and one reader's token is useless for another."""
    secret = get_meta(con, "csrf_secret")
    return hmac.new(secret.encode(), f"reader:{reader_id}".encode(), hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- tasks and answers


def next_task(con: sqlite3.Connection, reader_id: int) -> sqlite3.Row | None:
    """The reader's first unanswered task in their order (where they left off), with its image."""
    return con.execute(
        "SELECT t.id, t.image_id, t.position, t.shown_at, i.class_index, i.class_name FROM tasks t "
        "JOIN images i ON i.id = t.image_id "
        "WHERE t.reader_id = ? AND t.id NOT IN (SELECT task_id FROM answers) ORDER BY t.position LIMIT 1",
        (reader_id,)).fetchone()


def mark_shown(con: sqlite3.Connection, task_id: int) -> None:
    """The first time a task's image is displayed (a reload keeps the first time)."""
    with transaction(con):
        con.execute("UPDATE tasks SET shown_at = ? WHERE id = ? AND shown_at IS NULL", (time.time(), task_id))


def progress(con: sqlite3.Connection, reader_id: int) -> tuple[int, int]:
    row = con.execute(
        "SELECT COUNT(*) AS total, COUNT(a.task_id) AS done FROM tasks t LEFT JOIN answers a ON a.task_id = t.id "
        "WHERE t.reader_id = ?", (reader_id,)).fetchone()
    return int(row["done"]), int(row["total"])


def reader_may_see(con: sqlite3.Connection, reader_id: int, image_id: str) -> sqlite3.Row | None:
    """The image's file when the image is one of this reader's tasks, else None."""
    return con.execute("SELECT i.file FROM tasks t JOIN images i ON i.id = t.image_id "
                       "WHERE t.reader_id = ? AND t.image_id = ?", (reader_id, image_id)).fetchone()


class AnswerRejected(Exception):
    """An answer that is not stored; ``status`` is the HTTP status the app answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def record_answer(con: sqlite3.Connection, reader_id: int, task_id: int, image_id: str, *,
                  says_synthetic: int | None, confidence: int | None, plausible: int | None,
                  criteria_met: list[int] | None, note: str | None, client_ms: int | None) -> None:
    """Store one answer in one transaction, or raise AnswerRejected and store nothing: the task must
    be this reader's, show this image, and have no answer yet."""
    with transaction(con):
        task = con.execute("SELECT id, image_id, shown_at FROM tasks WHERE id = ? AND reader_id = ?",
                           (task_id, reader_id)).fetchone()
        if task is None:
            raise AnswerRejected(404, "no such task for this reader")
        if task["image_id"] != image_id:
            raise AnswerRejected(400, "this image does not belong to this task")
        if con.execute("SELECT 1 FROM answers WHERE task_id = ?", (task_id,)).fetchone():
            raise AnswerRejected(409, "this image has already been answered; answers cannot be changed")
        now = time.time()
        seconds = None if task["shown_at"] is None else now - task["shown_at"]
        con.execute(
            "INSERT INTO answers (task_id, says_synthetic, confidence, plausible, criteria_met, note, client_ms, "
            "answered_at, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (task_id, says_synthetic, confidence, plausible,
             None if criteria_met is None else json.dumps(criteria_met), note, client_ms, now, seconds))


def answer_rows(con: sqlite3.Connection) -> list[dict]:
    """Every answer joined with its reader, image and truth, in reader then position order."""
    rows = con.execute(
        "SELECT r.name AS reader, t.position, t.image_id, i.source, i.synthetic, i.class_index, i.class_name, "
        "i.origin_index, a.says_synthetic, a.confidence, a.plausible, a.criteria_met, a.note, a.client_ms, "
        "a.answered_at, a.seconds FROM answers a JOIN tasks t ON t.id = a.task_id "
        "JOIN readers r ON r.id = t.reader_id JOIN images i ON i.id = t.image_id ORDER BY r.id, t.position")
    out = []
    for r in rows:
        d = dict(r)
        d["criteria_met"] = None if d["criteria_met"] is None else json.loads(d["criteria_met"])
        out.append(d)
    return out


def reader_progress(con: sqlite3.Connection) -> list[dict]:
    rows = con.execute(
        "SELECT r.name, COUNT(t.id) AS total, COUNT(a.task_id) AS done, MAX(a.answered_at) AS last "
        "FROM readers r LEFT JOIN tasks t ON t.reader_id = r.id LEFT JOIN answers a ON a.task_id = t.id "
        "GROUP BY r.id ORDER BY r.id")
    return [dict(r) for r in rows]
