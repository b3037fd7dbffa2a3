#!/usr/bin/env python3
"""sensorbus benchmark driver (run by scripts/bench, which starts a release build of the stack).

Measures, in one run and interleaved round by round so that machine noise hits every scenario
alike:
  baseline      a bare libevent evhttp server answering 200 (tests/bench/baseline.c)
  gw-single     the gateway's authenticated single-reading POST, answered after Kafka's ack
  gw-batch500   the gateway with 500 readings per POST
For each: requests/s, readings/s, p50/p99 latency and server CPU microseconds per request (from
/proc/<pid>/stat), as medians over the rounds, and the gateway-to-baseline ratios.
"""

import argparse
import json
import os
import pathlib
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def write_script(path, body, token):
    lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
    if token:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {token}"')
    lines.append(f'local f = assert(io.open("{body}", "r")); wrk.body = f:read("*a"); f:close()')
    # The gateway answers 202; count anything else as an error, as wrk does for non-2xx.
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run-dir", type=pathlib.Path, required=True)
    ap.add_argument("--baseline-port", type=int, required=True)
    ap.add_argument("--baseline-pid", type=int, required=True)
    ap.add_argument("--gateway-pid", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--json", type=pathlib.Path, help="also write the results here")
    args = ap.parse_args()

    env = load_env(args.run_dir)
    gw = env["SB_GATEWAY_URL"].rstrip("/") + "/sensors/data"
    token = env["SB_DEMO_API_KEY"]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="sb-bench-"))
    one = tmp / "one.json"
    one.write_text(json.dumps({"sensor_id": "bench-1", "value": 21.5, "unit": "degC"}))
    batch = tmp / "batch.json"
    batch.write_text(json.dumps([{"sensor_id": f"bench-{i % 50}", "value": float(i),
                                  "unit": "degC"} for i in range(500)]))
    for name, body, tok in (("baseline", one, None), ("single", one, token),
                            ("batch", batch, token)):
        write_script(tmp / f"{name}.lua", body, tok)

    scenarios = [
        ("baseline", f"http://127.0.0.1:{args.baseline_port}/sensors/data", "baseline",
         args.baseline_pid, args.connections, 1),
        ("gw-single", gw, "single", args.gateway_pid, args.connections, 1),
        ("gw-batch500", gw, "batch", args.gateway_pid, 16, 500),
    ]
    # Warm up: connections, key cache, Kafka producer batches.
    for _, url, script, _, conns, _ in scenarios:
        run_wrk(url, str(tmp / f"{script}.lua"), conns, 2)

    results = {s[0]: [] for s in scenarios}
    for rnd in range(args.rounds):
        for name, url, script, pid, conns, per_req in scenarios:
            t0 = cpu_ticks(pid)
            r = run_wrk(url, str(tmp / f"{script}.lua"), conns, args.seconds)
            r["cpu_us_per_req"] = (cpu_ticks(pid) - t0) / CLK_TCK * 1e6 / max(r["requests"], 1)
            r["readings_per_s"] = r["rps"] * per_req
            results[name].append(r)
            print(f"  round {rnd + 1} {name:12s} {r['rps']:10.0f} req/s  p50 {r['p50_ms']:.2f} ms"
                  f"  p99 {r['p99_ms']:.2f} ms  errors {r['errors']}", file=sys.stderr)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()

    med = {}
    for name, rs in results.items():
        med[name] = {k: statistics.median(r[k] for r in rs)
                     for k in ("rps", "readings_per_s", "p50_ms", "p99_ms", "cpu_us_per_req")}
        med[name]["errors"] = sum(r["errors"] for r in rs)
    print(f"\nsensorbus benchmark: medians of {args.rounds} rounds x {args.seconds}s, "
          f"wrk on the same {os.cpu_count()} cores\n")
    print(f"{'scenario':14s}{'req/s':>10s}{'readings/s':>12s}{'p50 ms':>9s}{'p99 ms':>9s}"
          f"{'CPU us/req':>12s}{'errors':>8s}")
    for name, m in med.items():
        print(f"{name:14s}{m['rps']:10.0f}{m['readings_per_s']:12.0f}{m['p50_ms']:9.2f}"
              f"{m['p99_ms']:9.2f}{m['cpu_us_per_req']:12.1f}{m['errors']:8d}")
    b = med["baseline"]
    print(f"\ngw-single / baseline: {med['gw-single']['rps'] / b['rps']:.2f}x req/s, "
          f"{med['gw-single']['cpu_us_per_req'] / max(b['cpu_us_per_req'], 1e-9):.1f}x CPU/req")
    print(f"gw-batch500 / baseline: {med['gw-batch500']['readings_per_s'] / b['rps']:.1f}x "
          f"readings/s vs baseline req/s")
    if args.json:
        args.json.write_text(json.dumps({"medians": med, "rounds": results}, indent=2))
    return 1 if any(m["errors"] for m in med.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
