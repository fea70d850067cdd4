"""The store file across versions and processes: rows this version cannot read are skipped and
kept, files from before schema versions are migrated, and the latest registration wins
everywhere."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from balancer.fakes.processes import BalancerProcess, WorkerProcess, free_port
from balancer.registry.models import worker_id
from balancer.registry.sqlite import SCHEMA_VERSION

# The schema before it had a version (user_version 0), as the first released balancer made it.
UNVERSIONED_SCHEMA = """
CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    model_name TEXT NOT NULL,
    spec BLOB NOT NULL,
    updated_at REAL NOT NULL
)
"""


def write_rows(db: Path, specs: list[dict[str, Any]]) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(UNVERSIONED_SCHEMA)
        for spec in specs:
            wid = worker_id(spec["model_name"], spec["req_url_template"])
            conn.execute(
                "INSERT INTO workers VALUES (?, ?, ?, ?)",
                (wid, spec["model_name"], orjson.dumps(spec), time.time()),
            )
    conn.close()


def rows(db: Path) -> dict[str, bytes]:
    with sqlite3.connect(db) as conn:
        found = dict(conn.execute("SELECT id, spec FROM workers").fetchall())
    conn.close()
    return found


def answered_by(balancer: BalancerProcess, model: str) -> str:
    """The name of the fake worker that answered a request for `model`."""
    reply = httpx.post(
        f"{balancer.url}/api/v1/chat/completions",
        json={"input": "who", "model_name": model},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    text: str = reply.json()["result"]
    return text.split("]")[0].removeprefix("[")


def test_a_row_this_version_cannot_read_is_skipped_kept_and_named(
    tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """A file from before schema versions, holding rows a newer balancer wrote: it is migrated,
    the balancer serves the other workers, and the rows stay as they were."""
    db = tmp_path / "mixed.db"
    good: list[dict[str, Any]] = [
        {"model_name": "kept", "api": "openai", "req_url_template": f"{w.url}/v1"}
        for w in workers[:2]
    ]
    newer_field = {**good[0], "req_url_template": "http://127.0.0.1:1/v1", "priority": 3}
    newer_value = {**good[0], "req_url_template": "http://127.0.0.1:2/v1", "req_type": "PUT"}
    write_rows(db, [good[0], newer_field, good[1], newer_value])
    before = rows(db)
    unreadable = [worker_id("kept", row["req_url_template"]) for row in (newer_field, newer_value)]

    balancer = BalancerProcess(tmp_path, db=db)
    balancer.start()
    try:
        listed = httpx.get(f"{balancer.url}/api/server/workers", timeout=5).json()["data"]
        assert [w["req_url_template"] for w in listed] == [row["req_url_template"] for row in good]
        assert answered_by(balancer, "kept") in {"w1", "w2"}
    finally:
        balancer.stop()
    log = [orjson.loads(line) for line in balancer.log.read_text().splitlines() if line[:1] == "{"]
    skipped = [line for line in log if line.get("event") == "stored_worker_skipped"]
    assert sorted(line["worker"] for line in skipped) == sorted(unreadable)
    assert all(line["level"] == "warning" for line in skipped)
    after = rows(db)
    assert {wid: after[wid] for wid in unreadable} == {wid: before[wid] for wid in unreadable}
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_the_latest_registration_wins_between_processes_and_after_a_restart(
    tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """Two balancers share one file. Model `m` has only unreachable workers, so its fallbacks
    answer: those of its latest registration, whichever process took it, and after a restart."""
    db = tmp_path / "shared.db"
    first = BalancerProcess(tmp_path, db=db, name="first")
    second = BalancerProcess(tmp_path, db=db, name="second")
    first.start()
    second.start()
    dead = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]

    def register(balancer: BalancerProcess, model: str, url: str, **fields: Any) -> None:
        registration = {"model_name": model, "api": "openai", "req_url_template": url, **fields}
        reply = httpx.post(f"{balancer.url}/api/server/register", json=registration, timeout=5)
        assert reply.status_code == 200, reply.text

    def both_see(count: int) -> None:
        deadline = time.monotonic() + 5
        for balancer in (first, second):
            while len(httpx.get(f"{balancer.url}/api/server/workers").json()["data"]) < count:
                assert time.monotonic() < deadline, f"{balancer.db} not shared"
                time.sleep(0.05)

    try:
        register(first, "fa", f"{workers[1].url}/v1")
        register(first, "fb", f"{workers[2].url}/v1")
        register(first, "m", dead[0], fallbacks=["fa"])
        register(second, "m", dead[1], fallbacks=["fb"])
        both_see(4)
        assert answered_by(first, "m") == "w3"
        assert answered_by(second, "m") == "w3"

        register(first, "m", dead[0], fallbacks=["fa"])  # again: now the latest
        assert answered_by(first, "m") == "w2"
        deadline = time.monotonic() + 5
        while answered_by(second, "m") != "w2":
            assert time.monotonic() < deadline, "the second balancer kept the older fallbacks"
            time.sleep(0.1)
        first.stop()
        restarted = BalancerProcess(tmp_path, db=db, port=first.port, name="first")
        restarted.start()
        try:
            assert answered_by(restarted, "m") == "w2"
        finally:
            restarted.stop()
    finally:
        first.stop()
        second.stop()


def test_a_store_written_by_a_newer_version_is_one_log_line_and_exit_1(tmp_path: Path) -> None:
    db = tmp_path / "newer.db"
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    balancer = BalancerProcess(tmp_path, db=db)
    balancer.spawn()
    assert balancer.wait() == 1
    log = balancer.log.read_text()
    last = orjson.loads(log.strip().splitlines()[-1])
    assert last["event"] == "bad_configuration"
    assert "Traceback" not in log
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
