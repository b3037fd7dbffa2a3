"""The gateway's API key lookups come back after a PostgreSQL restart, even under a steady stream
of requests (each failure used to push the reconnect back-off further, so a busy gateway never
reconnected), and keys it checked recently keep ingest working during the outage."""

import threading
import uuid

from conftest import reading, wait_until


def test_key_lookups_recover_after_a_postgres_restart_under_load(stack):
    busy = stack.new_tenant()
    stop = threading.Event()
    answers = []

    def stream():
        while not stop.is_set():
            try:
                answers.append(busy.post(reading(id=str(uuid.uuid4()))).status_code)
            except Exception as e:  # noqa: BLE001 (counted, the main thread asserts)
                answers.append(repr(e))

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    try:
        wait_until("the stream to be flowing", lambda: answers.count(202) >= 20)
        stack.stack("stop-component", "pg")
        seen = len(answers)
        wait_until("requests during the outage", lambda: len(answers) >= seen + 50, timeout=60)
        during = answers[seen:]
        stack.stack("start-component", "pg")
        # A key the gateway has never seen needs the database: it must be found again, while
        # the busy key's requests keep coming.
        fresh = stack.new_tenant()
        wait_until("a new key to be accepted after the restart",
                   lambda: fresh.post(reading()).status_code == 202, timeout=20)
    finally:
        stop.set()
        t.join(timeout=30)
    # The busy key was checked just before: its readings were accepted throughout.
    assert during.count(202) == len(during), sorted(set(map(str, during)))
