"""Assistant sessions on a real PostgreSQL server, started by the test in a temporary folder.

initdb and postgres refuse to run as root, so under root they run as the `postgres` user. Where the
PostgreSQL binaries are absent the tests skip, saying so (.ci/run installs them).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from nanonlp.dialogue.state import DialogueState

BIN = next((Path(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True) if (p / "initdb").is_file()), None) \
    if Path("/usr/lib/postgresql").is_dir() else None

pytestmark = pytest.mark.skipif(BIN is None, reason="PostgreSQL server binaries are not installed (apt-get install postgresql; .ci/run does it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    folder = Path(tempfile.mkdtemp(prefix="nanonlp-pg-"))
    data = folder / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        os.chmod(folder, 0o700)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(as_user + [str(BIN / "initdb"), "-D", str(data), "-U", "nanonlp", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    server = subprocess.Popen(as_user + [str(BIN / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
                                         "-k", str(folder), "-c", "fsync=off"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"postgresql+psycopg://nanonlp@127.0.0.1:{port}/postgres"
    try:
        import sqlalchemy as sa

        deadline = time.time() + 60
        while True:
            try:
                with sa.create_engine(url).connect() as db:
                    db.execute(sa.text("select 1"))
                break
            except sa.exc.OperationalError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start: {server.stderr.read().decode(errors='replace')[-2000:]}")
                time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(folder, ignore_errors=True)


def test_postgres_sessions_isolated_persisted_and_expired(postgres_url):
    from nanonlp.dialogue.sessions import SQLAlchemySessionStore, open_store

    store = open_store(postgres_url, expiry=60)
    assert isinstance(store, SQLAlchemySessionStore) and store.engine.dialect.name == "postgresql"
    a, b = DialogueState.new(store.new_id()), DialogueState.new(store.new_id())
    a.slots, b.slots = {"card_type": "visa"}, {"card_type": "amex"}
    store.put(a)
    store.put(b)
    a.slots["confirm"] = "yes"
    store.put(a)  # an update of the same row
    assert store.get(a.session_id).slots == {"card_type": "visa", "confirm": "yes"}
    assert store.get(b.session_id).slots == {"card_type": "amex"}
    store.close()
    other = SQLAlchemySessionStore(postgres_url, expiry=60)  # another process or machine on the same database
    assert other.get(b.session_id).slots == {"card_type": "amex"}
    old = other.get(a.session_id)
    old.updated = time.time() - 120
    other.put(old)
    assert other.get(a.session_id) is None  # expired, and deleted
    b_old = other.get(b.session_id)
    b_old.updated = time.time() - 120
    other.put(b_old)
    assert other.purge_expired() == 1 and other.get(b.session_id) is None
    other.close()


def test_postgres_unreachable_is_one_clear_error():
    from nanonlp.dialogue.sessions import SQLAlchemySessionStore
    from nanonlp.errors import NanoNLPError

    pytest.importorskip("psycopg")
    with pytest.raises(NanoNLPError, match="cannot reach the session database"):
        SQLAlchemySessionStore(f"postgresql+psycopg://nobody@127.0.0.1:{_free_port()}/none")


def test_assistant_conversation_continues_on_postgres(postgres_url):
    import nanonlp.dialogue as dialogue
    from dialogue_runs import trained_run

    run = trained_run("tiny_en")
    bot = dialogue.load(run, sessions=postgres_url)
    alice = bot.respond("I lost my card")
    bob = bot.respond("block my mastercard")
    assert bot.respond("visa", session_id=alice["session_id"])["slots"] == {"card_type": "visa"}
    bot.store.close()
    other_process = dialogue.load(run, sessions=postgres_url)  # another server process on the same database
    done = other_process.respond("yes", session_id=alice["session_id"])
    assert done["reply"] == "Done: your visa card is blocked."
    assert other_process.state(bob["session_id"]).slots == {"card_type": "mastercard"}
