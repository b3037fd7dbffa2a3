#!/usr/bin/env python3
"""sensorbus benchmark driver (run by scripts/bench, which starts a release build of the stack).

Measures, in one run and interleaved round by round so that machine noise hits every scenario
alike, each gateway scenario beside the bare-evhttp baseline it is compared with:

  wrk scenarios (as fast as the server answers, keep-alive):
    baseline        a bare libevent evhttp server answering 200 (tests/bench/baseline.c)
    gw-single       one reading per POST with an API key, answered after Kafka's ack
    gw-batch500     500 readings per POST with an API key
    gw-jwt          one reading per POST by a person: access token (JWT) and ?project_id=
    gw-dashboard    GET /dashboard/metrics by that person (served from the gateway's cache)
  fleet scenarios (tests/bench/fleet.c: paced, thousands of connections):
    fleet-baseline  the device fleet against the baseline server
    fleet           5,000 devices against the gateway, each on its own keep-alive connection
                    (an API key per 100 devices), each posting a reading at 2 requests/s

wrk scenarios report requests/s, readings/s, p50/p99 latency and server CPU microseconds per
request (from /proc/<pid>/stat); fleet scenarios report the achieved rate, p50/p90/p99/max
latency from each request's due time, errors by kind and the server's resident memory. Figures
are medians over the rounds, errors are summed, and ratios are against the baseline of this run.
"""

import argparse
import json
import os
import pathlib
import re
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import typing
import urllib.error
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")

# Every scenario, in the order a round runs them, with the baseline it is compared with.
SCENARIOS = {
    "baseline": None,
    "gw-single": "baseline",
    "gw-batch500": "baseline",
    "gw-jwt": "baseline",
    "gw-dashboard": "baseline",
    "fleet-baseline": None,
    "fleet": "fleet-baseline",
}

# The person and projects the scenarios use, created once per run directory.
BENCH_ORG = "bench"
BENCH_EMAIL = "bench@sensorbus.test"
FLEET_PROJECT = "fleet"  # in the demo organization, beside the demo project


class BenchError(Exception):
    pass


class WrkRun(typing.NamedTuple):
    url: str
    method: str
    body: pathlib.Path | None
    auth: str | None  # "key" (the demo API key), "jwt" (the bench person) or None
    server: str  # "gateway" or "baseline": whose CPU time is measured
    conns: int
    per_req: int  # readings per request


def load_env(run_dir):
    env = {}
    for line in (run_dir / "stack.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, _, v = line.removeprefix("export ").partition("=")
            env[k] = (shlex.split(v) or [""])[0]
    return env


def cpu_ticks(pid):
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def secret_file(run_dir, name, nbytes):
    """The secret in secrets/<name>, generated the first time (the stack's sb_secret does the
    same), so that a second run on the same database signs in as the same person."""
    path = run_dir / "secrets" / name
    if not path.exists() or not path.read_text().strip():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(nbytes) + "\n")
    return path.read_text().strip()


# ---- HTTP and the stack's tools ------------------------------------------------------------

def http(method, url, body=None, token=None):
    """(status, parsed JSON or None) of one request; never raises for an HTTP status."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def problem_detail(doc):
    return doc.get("detail", "") if isinstance(doc, dict) else ""


def stack_tool(env, *cmd):
    """Runs sbctl or psql against the bench stack: settings come from its stack.env (sbctl reads
    the file itself when a variable is unset), never from the caller's environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SB_")}
    clean["SB_RUN_DIR"] = env["SB_RUN_DIR"]
    r = subprocess.run(cmd, env=clean, capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"{' '.join(cmd[:3])} failed: {r.stderr.strip()}")
    return r.stdout.strip()


def sbctl(env, *args):
    return stack_tool(env, str(pathlib.Path(env["SB_BUILD_DIR"]) / "sbctl"), *args)


def psql(env, sql):
    return stack_tool(env, "psql", env["SB_PG_DSN"], "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql)


# ---- scenario setup --------------------------------------------------------------------------

class Person:
    """The bench's person: registered once (admin of the organization "bench"), signs in for a
    fresh access token each round (tokens live 15 minutes by default), owns the project "bench"."""

    def __init__(self, env, run_dir):
        self.base = env["SB_GATEWAY_URL"].rstrip("/")
        self.env = env
        self.password = secret_file(run_dir, "bench_password", 16)
        status, doc = http("POST", f"{self.base}/auth/register",
                           {"email": BENCH_EMAIL, "password": self.password, "name": "Bench",
                            "organization": BENCH_ORG})
        if status not in (201, 409):  # 409: registered by an earlier run
            raise BenchError(f"POST /auth/register answered {status}: {problem_detail(doc)}")
        self.project_id = self.project()

    def token(self):
        status, doc = http("POST", f"{self.base}/auth/token",
                           {"email": BENCH_EMAIL, "password": self.password,
                            "organization": BENCH_ORG})
        if status != 200 or not isinstance(doc, dict) or "access_token" not in doc:
            raise BenchError(f"POST /auth/token answered {status}: {problem_detail(doc)} "
                             "(if the bench database outlived secrets/bench_password, remove "
                             "the bench run directory)")
        return doc["access_token"]

    def project(self):
        """The project "bench": made through the admin API when the gateway has it, else with
        sbctl (the same row either way)."""
        token = self.token()
        status, doc = http("POST", f"{self.base}/projects", {"slug": BENCH_ORG, "name": "Bench"},
                           token)
        if status in (200, 201) and isinstance(doc, dict) and doc.get("id"):
            return doc["id"]
        if status == 409:
            status, doc = http("GET", f"{self.base}/projects", token=token)
            items = doc.get("items", doc.get("projects", [])) if isinstance(doc, dict) else doc
            for p in items if isinstance(items, list) else []:
                if isinstance(p, dict) and p.get("slug") == BENCH_ORG and p.get("id"):
                    return p["id"]
        print(f"  POST /projects answered {status} ({problem_detail(doc) or 'no detail'}): "
              "creating the project with sbctl", file=sys.stderr)
        return sbctl(self.env, "projects", "create", BENCH_ORG, BENCH_ORG).splitlines()[-1]


def fleet_keys(env, run_dir, n):
    """A file of n API keys (scope ingest, project demo/fleet), one per line: the stored ones when
    the database still has them all unrevoked, else n new ones."""
    path = run_dir / "secrets" / "fleet_keys"
    keys = path.read_text().split() if path.exists() else []
    if len(keys) >= n:
        prefixes = ",".join("'" + k.removeprefix("lok_").split(".")[0] + "'" for k in keys[:n]
                            if re.fullmatch(r"lok_[a-z2-7]{12}\.\S+", k))
        if prefixes and int(psql(env, "SELECT count(*) FROM api_keys WHERE prefix IN "
                                      f"({prefixes}) AND revoked_at IS NULL")) == n:
            return path
    print(f"  creating {n} API keys for the fleet (sbctl keys create)", file=sys.stderr)
    sbctl(env, "projects", "create", "demo", FLEET_PROJECT)
    keys = []
    for i in range(n):
        tok = sbctl(env, "keys", "create", "--org", "demo", "--project", FLEET_PROJECT,
                    "--name", f"fleet-{i}", "--scopes", "ingest").splitlines()[-1]
        if not tok.startswith("lok_"):
            raise BenchError("sbctl keys create printed no lok_ token")
        keys.append(tok)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(keys) + "\n")
    return path


# ---- wrk -------------------------------------------------------------------------------------

def parse_duration(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)", s)
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[unit]


def run_wrk(url, script, conns, seconds, threads=1):
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", script, url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    res = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
           "requests": int(re.search(r"(\d+) requests in", out).group(1)),
           "p50_ms": parse_duration(re.search(r"\s50%\s+(\S+)", out).group(1)),
           "p99_ms": parse_duration(re.search(r"\s99%\s+(\S+)", out).group(1))}
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["errors"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["errors"] += sum(int(x) for x in m.groups()) if m else 0
    return res


def write_script(path, method, body, token):
    """A wrk script; wrk counts any non-2xx answer as an error."""
    lines = [f'wrk.method = "{method}"']
    if token:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {token}"')
    if body:
        lines.append('wrk.headers["Content-Type"] = "application/json"')
        lines.append(f'local f = assert(io.open("{body}", "r")); wrk.body = f:read("*a"); '
                     'f:close()')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")


# ---- the fleet -------------------------------------------------------------------------------

def run_fleet(args, binary, url, pid, keys, expect, out):
    cmd = [str(binary), "--url", url, "--keys", str(keys), "--devices", str(args.fleet_devices),
           "--rate", str(args.fleet_rate), "--ramp", str(args.fleet_ramp),
           "--seconds", str(args.fleet_seconds), "--per-key", str(args.fleet_per_key),
           "--expect", str(expect), "--pid", str(pid), "--json", str(out), "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if not out.exists() or r.returncode not in (0, 1):
        raise BenchError(f"sb-bench-fleet failed (exit {r.returncode}): {r.stderr.strip()}")
    res = json.loads(out.read_text())
    out.unlink()
    srv = res.get("server", {})
    return {"offered_rps": res["offered_rps"], "rps": res["achieved_rps"],
            "p50_ms": res["p50_ms"], "p90_ms": res["p90_ms"], "p99_ms": res["p99_ms"],
            "max_ms": res["max_ms"], "lag_p99_ms": res["lag_p99_ms"],
            "rss_before_mib": srv.get("rss_before_kib", 0) / 1024,
            "rss_peak_mib": srv.get("rss_peak_kib", 0) / 1024,
            "hwm_mib": srv.get("hwm_kib", 0) / 1024,
            "cpu_us_per_req": srv.get("cpu_us_per_req", 0.0),
            "errors": res["errors"], "errors_by_kind": res["errors_by_kind"],
            "status_counts": res["status_counts"], "sent": res["sent"], "ok": res["ok"],
            "late_sends": res["late_sends"], "skipped_sends": res["skipped_sends"]}


# ---- main ------------------------------------------------------------------------------------

def selected(only):
    """The scenarios to run: all, or those named plus the baselines they are compared with."""
    if not only:
        return list(SCENARIOS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"scripts/bench: unknown scenario {', '.join(unknown)} "
                         f"(one of: {', '.join(SCENARIOS)})")
    want = set(names) | {SCENARIOS[n] for n in names if SCENARIOS[n]}
    return [n for n in SCENARIOS if n in want]


def median_of(rs, keys):
    m = {k: statistics.median(r[k] for r in rs) for k in keys}
    m["errors"] = sum(r["errors"] for r in rs)
    return m


def ratio(a, b):
    return a / b if b else float("nan")


def main():
    ap = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", metavar="LIST",
                    help="comma-separated scenarios to run (their baselines run too)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every scenario (3)")
    ap.add_argument("--seconds", type=int, default=10, help="seconds per wrk run (10)")
    ap.add_argument("--connections", type=int, default=64,
                    help="wrk connections of the single-reading scenarios (64)")
    ap.add_argument("--fleet-rounds", type=int, help="rounds of the fleet (default: --rounds)")
    ap.add_argument("--fleet-devices", type=int, default=5000, help="devices (5000)")
    ap.add_argument("--fleet-rate", type=float, default=2.0, help="requests/s per device (2)")
    ap.add_argument("--fleet-seconds", type=int, default=60, help="measured seconds (60)")
    ap.add_argument("--fleet-ramp", type=float, default=10.0,
                    help="seconds over which the devices connect (10)")
    ap.add_argument("--fleet-per-key", type=int, default=100, help="devices per API key (100)")
    # Set by scripts/bench, which first checks the user's options with --check-args alone.
    ap.add_argument("--check-args", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", type=pathlib.Path, help=argparse.SUPPRESS)
    ap.add_argument("--baseline-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--baseline-pid", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--gateway-pid", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=pathlib.Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rounds < 1 or args.seconds < 1 or args.connections < 1 or args.fleet_devices < 1 \
            or args.fleet_seconds < 1 or args.fleet_per_key < 1 or not args.fleet_rate > 0 \
            or args.fleet_ramp < 0 or (args.fleet_rounds is not None and args.fleet_rounds < 1):
        ap.error("counts, durations and rates must be positive")
    fleet_rounds = args.fleet_rounds or args.rounds
    names = selected(args.only)
    if args.check_args:
        return 0
    if None in (args.run_dir, args.baseline_port, args.baseline_pid, args.gateway_pid):
        ap.error("run it through scripts/bench, which starts the stack")
    try:
        return bench(args, names, fleet_rounds)
    except BenchError as e:
        print(f"bench.py: {e}", file=sys.stderr)
        return 1


def bench(args, names, fleet_rounds):
    env = load_env(args.run_dir)
    gw_base = env["SB_GATEWAY_URL"].rstrip("/")
    bl_base = f"http://127.0.0.1:{args.baseline_port}"
    pids = {"baseline": args.baseline_pid, "gateway": args.gateway_pid}
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="sb-bench-"))
    one = tmp / "one.json"
    one.write_text(json.dumps({"sensor_id": "bench-1", "value": 21.5, "unit": "Cel"}))
    batch = tmp / "batch.json"
    batch.write_text(json.dumps([{"sensor_id": f"bench-{i % 50}", "value": float(i),
                                  "unit": "Cel"} for i in range(500)]))

    person = None
    if {"gw-jwt", "gw-dashboard"} & set(names):
        person = Person(env, args.run_dir)
    keys = None
    if "fleet-baseline" in names or "fleet" in names:
        keys = fleet_keys(env, args.run_dir,
                          -(-args.fleet_devices // args.fleet_per_key))
    fleet_bin = pathlib.Path(env["SB_BUILD_DIR"]) / "tests/bench/sb-bench-fleet"

    q = f"?project_id={person.project_id}" if person else ""
    c = args.connections
    wrk = {
        "baseline": WrkRun(f"{bl_base}/sensors/data", "POST", one, None, "baseline", c, 1),
        "gw-single": WrkRun(f"{gw_base}/sensors/data", "POST", one, "key", "gateway", c, 1),
        "gw-batch500": WrkRun(f"{gw_base}/sensors/data", "POST", batch, "key", "gateway", 16,
                              500),
        "gw-jwt": WrkRun(f"{gw_base}/sensors/data{q}", "POST", one, "jwt", "gateway", c, 1),
        "gw-dashboard": WrkRun(f"{gw_base}/dashboard/metrics{q}", "GET", None, "jwt", "gateway",
                               c, 0),
    }
    # name -> (server URL, server, the status that counts as success)
    fleet = {"fleet-baseline": (bl_base, "baseline", 200), "fleet": (gw_base, "gateway", 202)}

    def scripts():
        """(Re)writes every wrk script; a person's token is fresh for each round."""
        jwt = person.token() if person else None
        for name in names:
            if name in wrk:
                w = wrk[name]
                token = {"key": env["SB_DEMO_API_KEY"], "jwt": jwt, None: None}[w.auth]
                write_script(tmp / f"{name}.lua", w.method, w.body, token)

    results = {n: [] for n in names}
    try:
        scripts()
        # Warm up: connections, key cache, project cache, Kafka producer batches.
        for name in names:
            if name in wrk:
                run_wrk(wrk[name].url, str(tmp / f"{name}.lua"), wrk[name].conns, 2)
        for rnd in range(max(args.rounds if set(names) & set(wrk) else 0,
                             fleet_rounds if set(names) & set(fleet) else 0)):
            if rnd:
                scripts()
            for name in names:
                if name in wrk and rnd < args.rounds:
                    w = wrk[name]
                    pid = pids[w.server]
                    t0 = cpu_ticks(pid)
                    r = run_wrk(w.url, str(tmp / f"{name}.lua"), w.conns, args.seconds)
                    r["cpu_us_per_req"] = ((cpu_ticks(pid) - t0) / CLK_TCK * 1e6
                                           / max(r["requests"], 1))
                    r["readings_per_s"] = r["rps"] * w.per_req
                    print(f"  round {rnd + 1} {name:14s} {r['rps']:10.0f} req/s  "
                          f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                          f"errors {r['errors']}", file=sys.stderr)
                elif name in fleet and rnd < fleet_rounds:
                    base, server, expect = fleet[name]
                    r = run_fleet(args, fleet_bin, f"{base}/sensors/data", pids[server], keys,
                                  expect, tmp / "fleet.json")
                    kinds = ", ".join(f"{k} {v}" for k, v in r["errors_by_kind"].items() if v)
                    print(f"  round {rnd + 1} {name:14s} {r['rps']:10.0f} req/s of "
                          f"{r['offered_rps']:.0f}  p50 {r['p50_ms']:.2f} ms  "
                          f"p99 {r['p99_ms']:.2f} ms  errors {r['errors']}"
                          f"{' (' + kinds + ')' if kinds else ''}  "
                          f"lag p99 {r['lag_p99_ms']:.2f} ms  RSS {r['rss_peak_mib']:.1f} MiB",
                          file=sys.stderr)
                else:
                    continue
                results[name].append(r)
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()

    return report(args, names, results, wrk, fleet, fleet_rounds)


def report(args, names, results, wrk, fleet, fleet_rounds):
    med = {}
    wrk_names = [n for n in names if n in wrk]
    fleet_names = [n for n in names if n in fleet]
    cores = os.cpu_count()
    if wrk_names:
        print(f"\nsensorbus benchmark: medians of {args.rounds} rounds x {args.seconds}s, "
              f"wrk on the same {cores} cores\n")
        print(f"{'scenario':14s}{'req/s':>10s}{'readings/s':>12s}{'p50 ms':>9s}{'p99 ms':>9s}"
              f"{'CPU us/req':>12s}{'errors':>8s}")
        for name in wrk_names:
            m = med[name] = median_of(results[name], ("rps", "readings_per_s", "p50_ms",
                                                      "p99_ms", "cpu_us_per_req"))
            readings = f"{m['readings_per_s']:12.0f}" if wrk[name].per_req else f"{'-':>12s}"
            print(f"{name:14s}{m['rps']:10.0f}{readings}{m['p50_ms']:9.2f}"
                  f"{m['p99_ms']:9.2f}{m['cpu_us_per_req']:12.1f}{m['errors']:8d}")
    if fleet_names:
        d = args.fleet_devices
        print(f"\ndevice fleet: {d} devices x {args.fleet_rate:g} req/s = "
              f"{d * args.fleet_rate:.0f} req/s offered, medians of {fleet_rounds} rounds x "
              f"{args.fleet_seconds}s after a {args.fleet_ramp + 2:g}s ramp-up\n")
        print(f"{'scenario':16s}{'req/s':>8s}{'p50 ms':>9s}{'p90 ms':>9s}{'p99 ms':>9s}"
              f"{'max ms':>9s}{'lag p99':>9s}{'RSS MiB':>9s}{'HWM MiB':>9s}{'CPU us/req':>12s}"
              f"{'errors':>8s}")
        for name in fleet_names:
            m = med[name] = median_of(results[name], (
                "rps", "offered_rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "lag_p99_ms",
                "rss_before_mib", "rss_peak_mib", "hwm_mib", "cpu_us_per_req"))
            print(f"{name:16s}{m['rps']:8.0f}{m['p50_ms']:9.2f}{m['p90_ms']:9.2f}"
                  f"{m['p99_ms']:9.2f}{m['max_ms']:9.2f}{m['lag_p99_ms']:9.2f}"
                  f"{m['rss_peak_mib']:9.1f}{m['hwm_mib']:9.1f}{m['cpu_us_per_req']:12.1f}"
                  f"{m['errors']:8d}")
        for name in fleet_names:
            kinds = {}
            for r in results[name]:
                for k, v in list(r["errors_by_kind"].items()) + \
                        [(f"HTTP {s}", v) for s, v in r["status_counts"].items()]:
                    kinds[k] = kinds.get(k, 0) + v
            if any(kinds.values()):
                print(f"  {name} errors: " + ", ".join(f"{k} {v}" for k, v in kinds.items() if v))
        print("  Latency runs from each request's due time (a send held back by a late answer "
              "counts its wait);\n  lag p99 is the generator's own delay in sending on time; RSS "
              "is the peak VmRSS sampled each second\n  in the window, HWM the VmHWM at its end "
              "(the server's peak since it started).")
    print()
    b = med.get("baseline")
    for name in ("gw-single", "gw-jwt", "gw-dashboard"):
        if b and name in med:
            print(f"{name} / baseline: {ratio(med[name]['rps'], b['rps']):.2f}x req/s, "
                  f"{ratio(med[name]['cpu_us_per_req'], b['cpu_us_per_req']):.1f}x CPU/req")
    if b and "gw-batch500" in med:
        print(f"gw-batch500 / baseline: {ratio(med['gw-batch500']['readings_per_s'], b['rps']):.1f}"
              "x readings/s vs baseline req/s")
    fb, f = med.get("fleet-baseline"), med.get("fleet")
    if fb and f:
        print(f"fleet / fleet-baseline: {ratio(f['p50_ms'], fb['p50_ms']):.1f}x p50, "
              f"{ratio(f['p99_ms'], fb['p99_ms']):.1f}x p99, "
              f"{ratio(f['cpu_us_per_req'], fb['cpu_us_per_req']):.1f}x CPU/req")
    for name, who in (("fleet", "gateway"), ("fleet-baseline", "baseline")):
        if name in med:
            m = med[name]
            print(f"{who} resident memory with {args.fleet_devices} connections: "
                  f"{m['rss_peak_mib']:.1f} MiB (VmRSS {m['rss_before_mib']:.1f} MiB before they "
                  f"connected; VmHWM {m['hwm_mib']:.1f} MiB)")
    if args.json:
        args.json.write_text(json.dumps({"medians": med, "rounds": results}, indent=2))
    return 1 if any(m["errors"] for m in med.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
