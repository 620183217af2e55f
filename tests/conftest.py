"""Shared fixtures: a real PostgreSQL database (skipped loudly without one, failed in CI)."""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy

from missing_dependency import skip_loudly_or_fail
from xrouter.common.outcomes import ROUTERBENCH, read_outcomes

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _postgres_url() -> str:
    return os.environ.get("XROUTER_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """URL of a reachable PostgreSQL server; a missing server skips loudly, or fails under CI=true."""
    url = _postgres_url()
    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("select 1"))
        engine.dispose()
    except sqlalchemy.exc.OperationalError as error:
        skip_loudly_or_fail(f"PostgreSQL not reachable at {url} ({type(error).__name__}): Postgres tests SKIPPED",
                            "Postgres")
    return url


@pytest.fixture()
def postgres_url(postgres_server_url: str) -> str:
    """A fresh, empty schema on the server for one test (dropped afterwards)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(postgres_server_url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f'create schema "{schema}"'))
    separator = "&" if "?" in postgres_server_url else "?"
    yield f"{postgres_server_url}{separator}options=-csearch_path%3D{schema}"
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f'drop schema "{schema}" cascade'))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """Each metering test runs on SQLite (the embedded default) and on real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'metering.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def recorded() -> dict[str, dict[str, str]]:
    """The bundled RouterBench set: prompt_id → {model: recorded response}, the prompt text under ''."""
    rows: dict[str, dict[str, str]] = {}
    for row in read_outcomes(ROUTERBENCH):
        entry = rows.setdefault(row.prompt_id, {"": row.prompt})
        entry[row.model] = row.response or ""
    return rows
