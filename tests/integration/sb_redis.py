"""A small RESP2 client for the integration tests (the test venv has no Redis client), and the
aggregates of docs/aggregates.md as Redis holds them and as PostgreSQL says they should be."""

import datetime as dt
import socket
import urllib.parse


class Redis:
    """One connection to the stack's Redis; call it with a command's words."""

    def __init__(self, url, timeout=5.0):
        u = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port or 6379), timeout=timeout)
        self.file = self.sock.makefile("rb")
        if u.password:
            user = [urllib.parse.unquote(u.username)] if u.username else []
            self(["AUTH", *user, urllib.parse.unquote(u.password)])
        if u.path.strip("/"):
            self("SELECT", u.path.strip("/"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.file.close()
        self.sock.close()

    def __call__(self, *words):
        if len(words) == 1 and isinstance(words[0], list):
            words = words[0]
        data = [str(w).encode() for w in words]
        self.sock.sendall(b"*%d\r\n" % len(data) +
                          b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in data))
        return self._reply()

    def _reply(self):
        line = self.file.readline()
        if not line:
            raise ConnectionError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"-":
            raise AssertionError(f"Redis: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.file.read(n + 2)[:-2].decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        return rest.decode()

    def scan(self, pattern):
        cursor, keys = "0", []
        while True:
            cursor, batch = self("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            keys += batch
            if cursor == "0":
                return sorted(set(keys))

    def hgetall(self, key):
        flat = self("HGETALL", key)
        return dict(zip(flat[::2], flat[1::2]))


def redis_command(url, *words):
    """One command on a fresh connection."""
    with Redis(url) as r:
        return r(*words)


def rfc3339(t):
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def aggregates_in_redis(url, project_id):
    """The reading aggregates of a project as Redis holds them, numbers parsed."""
    with Redis(url) as r:
        rpm = {int(k.rsplit(":", 1)[1]): int(r("GET", k))
               for k in r.scan(f"sb:rpm:{project_id}:*")}
        sensors = {}
        for k in r.scan(f"sb:sensor:{project_id}:*"):
            h = r.hgetall(k)

            def num(field, kind=float, h=h):
                return kind(h[field]) if field in h else None
            sensors[k.split(":", 3)[3]] = {
                "count": num("count", int), "min": num("min"), "max": num("max"),
                "last_value": num("last_value"), "last_ts": h.get("last_ts")}
        seen = set(r("SMEMBERS", f"sb:sensors:{project_id}"))
    return {"rpm": rpm, "sensors": sensors, "seen": seen}


def aggregates_in_postgres(stack, project_id):
    """What docs/aggregates.md says Redis must hold for a project, computed from PostgreSQL."""
    rpm = dict(stack.sql(
        "SELECT floor(extract(epoch FROM ts) / 60)::bigint, count(*) FROM sensor_readings "
        "WHERE project_id = %s AND ts >= to_timestamp(floor((extract(epoch FROM now()) - "
        "48 * 3600) / 60) * 60) GROUP BY 1", project_id))
    sensors = {}
    for sensor, n, lo, hi in stack.sql(
            "SELECT sensor_id, count(*), min(value), max(value) FROM sensor_readings "
            "WHERE project_id = %s GROUP BY 1", project_id):
        sensors[sensor] = {"count": n, "min": lo, "max": hi}
    for sensor, ts, value in stack.sql(
            "SELECT DISTINCT ON (sensor_id) sensor_id, ts, value FROM sensor_readings "
            "WHERE project_id = %s ORDER BY sensor_id, ts DESC, value DESC", project_id):
        sensors[sensor].update(last_value=value, last_ts=rfc3339(ts))
    return {"rpm": rpm, "sensors": sensors, "seen": set(sensors)}
