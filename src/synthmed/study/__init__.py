"""Reader studies: real-or-synthetic (visual Turing test) and expert plausibility rating, answered in a
browser, stored in SQLite, analysed with agreement statistics.

    create.py   pick images, copy them under opaque ids, write the database, one private link per reader
    db.py       the SQLite schema (WAL) and every read / write of it
    app.py      the web app (Starlette + Jinja2, plain HTML forms) and `serve`
    stats.py    Cohen's / Fleiss' kappa, exact binomial test and intervals
    analyze.py  per-reader / across-reader / per-image tables, CSV / JSON export, HTML section

The web stack is the optional extra ``study`` (``pip install -e '.[study]'``); :func:`require_extra`
says so in one line when it is missing. Nothing here is imported by the rest of synthmed but the CLI.
"""

from __future__ import annotations

from importlib.util import find_spec

# module name -> the package that provides it
EXTRA_MODULES = {"starlette": "starlette", "jinja2": "jinja2", "uvicorn": "uvicorn", "multipart": "python-multipart"}


class StudyExtraMissing(ValueError):
    """The web stack of the reader study is not installed."""


def require_extra() -> None:
    missing = [pkg for mod, pkg in EXTRA_MODULES.items() if find_spec(mod) is None]
    if missing:
        raise StudyExtraMissing(f"the reader study needs the 'study' extra ({', '.join(missing)} not installed): "
                                "pip install -e '.[study]'")
