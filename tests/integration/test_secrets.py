"""API secrets never reach a log line or a Kafka record: only the key's prefix may."""

import pathlib

from conftest import READINGS_TOPIC, reading, wait_until


def test_api_secret_is_never_logged_nor_produced(stack):
    t = stack.new_tenant()
    prefix, secret = t.token.split(".", 1)
    forged = prefix + "." + secret[::-1]
    assert t.post(reading("canary", 1.0)).status_code == 202
    assert t.post(reading("canary", 1.0), token=forged).status_code == 401
    assert t.post(reading("canary", 1.0), token="lok_" + secret[:12] + "." + secret).status_code == 401
    assert t.post({"sensor_id": secret[:20], "value": "x"}).status_code == 422

    rid = t.post(reading("canary-last", 2.0)).json()["ids"][0]
    wait_until("the last reading in PostgreSQL", lambda: t.row_count([rid]) == 1)

    logs = pathlib.Path(stack.env["SB_RUN_DIR"]) / "logs"
    for log in logs.glob("*.log"):
        text = log.read_text(errors="replace")
        assert secret not in text and secret[::-1] not in text, f"secret in {log}"
    for m in stack.read_topic(READINGS_TOPIC):
        blob = (m.value() or b"") + b"".join(v or b"" for _, v in (m.headers() or []))
        assert secret.encode() not in blob
