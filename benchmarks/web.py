"""Web sessions under concurrent requests: the example Flask app (examples/flask_app.py) on fmredis's
``FmRedisSessionInterface`` against the same app on Flask-Session 0.8's ``RedisSessionInterface``.

Each variant's app runs in a child process of its own under waitress (8 threads), on 127.0.0.1, both on one
redis-server of this script's own (127.0.0.1, no persistence). 16 client threads in this process, each on its own
keep-alive ``http.client`` connection, send read-modify-write requests back to back for ``--seconds``
(``POST /incr/<key>``: ``session[key] += 1``, the session returned as JSON): 8 on a session of their own, 8 in 2 groups
of 4 sharing one session (one cookie, like a user's browser tabs), each client incrementing its own key in it. The
variants are interleaved: ``--rounds`` rounds, alternating which goes first, after an unrecorded warm-up of each.

Per round: requests/s, request latency p50/p99 (all, own sessions, shared sessions), the app process's CPU per request,
Redis commands per request, failed requests; then lost updates: every session is read back (``GET /session``) and
each key's count compared with the increments its client saw succeed (HTTP 200; the request that created the session
counts as one). A save of the whole session (Flask-Session) lets the later of two overlapping requests on a shared
session write back the other key's old count; fmredis saves only the key a request changed, merged atomically.
Each shared session is made by a ``POST /login`` (``regenerate``) on a fresh session: the round also checks that the
login moved the data to a new id and that the old cookie reads an empty session.

    python -m benchmarks.web            # about 40 s; writes benchmarks/results/web.json
    python -m benchmarks.web --quick    # 1 round of 1 s per variant (a smoke run, about 5 s)

The clients share this process's GIL: a request's latency includes the client's own wait for it, the same for both
variants. Each phase's clients end by the clock; the figures are comparable between variants of one run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from http.cookies import SimpleCookie
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from benchmarks.outage import percentiles  # the same latency summary (count, p50/p99/max ms)
from fmredis import create_redis_client, diagnostics
from tests.harness.servers import LOOPBACK, RedisServer

ROOT = Path(__file__).resolve().parent.parent  # the checkout: the app's process imports examples/ from there
RESULTS = ROOT / "benchmarks" / "results"
FMREDIS, FLASK_SESSION = "fmredis", "flask-session"
VARIANTS = (FMREDIS, FLASK_SESSION)
COOKIE = "session"  # Flask's SESSION_COOKIE_NAME, both variants
FLASK_SESSION_PREFIX = "flask_session:"  # Flask-Session's keys (fmredis's interface uses its own "flask-session:")
APP_THREADS = 8
TIMEOUT = 30.0  # a client's socket timeout: far above any latency here, so a timeout is a failure worth reporting


# -- the app's process ---------------------------------------------------------------------------------------------


def serve(variant: str, redis_url: str) -> None:
    """Child process: the example app with ``variant``'s session interface under waitress on 127.0.0.1, on a free
    port printed as ``port N`` once it listens."""
    import waitress

    from examples.flask_app import create_app

    if variant == FMREDIS:
        app = create_app(config={"FMREDIS_REDIS": {"url": redis_url}})
    else:
        from flask_session.redis import RedisSessionInterface

        client = redis.Redis.from_url(redis_url)  # Flask-Session takes a redis.Redis client (SESSION_REDIS)
        app = create_app(lambda app: RedisSessionInterface(app, client=client, key_prefix=FLASK_SESSION_PREFIX))
    # 16 clients on 8 threads keep requests queued: waitress would warn about the queue depth on every request.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    server = waitress.create_server(app, host=LOOPBACK, port=0, threads=APP_THREADS)
    print(f"port {server.effective_port}", flush=True)
    server.run()


class AppServer:
    """The app's child process (``python -m benchmarks.web --serve VARIANT``): its port, its CPU time."""

    def __init__(self, variant: str, redis_url: str) -> None:
        self.variant = variant
        command = [sys.executable, "-m", "benchmarks.web", "--serve", variant, "--redis-url", redis_url]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # blocks until it listens, or "" if it died first
        if not line.startswith("port "):
            self.close()
            raise RuntimeError(f"the {variant} app did not start (exit code {self.process.returncode})")
        self.port = int(line.split()[1])

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the app's process so far (Linux /proc)."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> AppServer:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


# -- HTTP ----------------------------------------------------------------------------------------------------------


def call(
    port: int, method: str, path: str, cookie: str | None = None, form: str | None = None
) -> tuple[int, Any, str | None]:
    """One request on a connection of its own: status, JSON body (or None), and the session cookie it set (or None)."""
    headers = {} if cookie is None else {"Cookie": f"{COOKIE}={cookie}"}
    if form is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=form, headers=headers)
        response = conn.getresponse()
        body = response.read()
        cookies: SimpleCookie = SimpleCookie()
        for header in response.headers.get_all("Set-Cookie") or []:
            cookies.load(header)
        morsel = cookies.get(COOKIE)
        is_json = response.headers.get_content_type() == "application/json"
        return response.status, json.loads(body) if is_json else None, morsel.value if morsel else None
    finally:
        conn.close()


def new_session(port: int, key: str) -> str:
    """A session made by one ``POST /incr/<key>`` (so ``key`` is 1 in it): its cookie."""
    status, body, cookie = call(port, "POST", f"/incr/{key}")
    if status != 200 or cookie is None or body != {key: 1}:
        raise RuntimeError(f"POST /incr/{key} without a cookie: HTTP {status}, cookie set: {cookie is not None}")
    return cookie


def logged_in(port: int, key: str, user_id: str) -> tuple[str, dict[str, Any]]:
    """A fresh session (``key`` = 1), then ``POST /login`` on it: the new cookie, and what the login did."""
    old = new_session(port, key)
    status, body, cookie = call(port, "POST", "/login", old, f"user_id={user_id}")
    if status != 200 or cookie is None:
        raise RuntimeError(f"POST /login: HTTP {status}, cookie set: {cookie is not None}")
    _, old_reads, _ = call(port, "GET", "/session", old)
    _, new_reads, _ = call(port, "GET", "/session", cookie)
    return cookie, {
        "new_cookie": cookie != old,
        "data_kept": body == new_reads == {key: 1, "user_id": user_id},
        "old_cookie_reads_empty": old_reads == {},
    }


class Client(threading.Thread):
    """One client: ``POST /incr/<key>`` with ``cookie`` on one keep-alive connection, back to back until ``deadline``
    (set before ``start.wait()`` returns). Counts the increments the app acknowledged (200) and times every request."""

    def __init__(self, port: int, cookie: str, key: str, shared: bool, start: threading.Barrier) -> None:
        super().__init__(daemon=True)
        self.port, self.cookie, self.key, self.shared, self.start_line = port, cookie, key, shared, start
        self.deadline = 0.0
        self.acknowledged = 0
        self.latencies: list[float] = []
        self.failed: Counter[str] = Counter()

    def run(self) -> None:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=TIMEOUT)
        headers, path, clock = {"Cookie": f"{COOKIE}={self.cookie}"}, f"/incr/{self.key}", time.perf_counter
        self.start_line.wait()
        try:
            while clock() < self.deadline:
                started = clock()
                try:
                    conn.request("POST", path, headers=headers)
                    response = conn.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()  # the next request reconnects
                    self.failed[type(exc).__name__] += 1
                    continue
                self.latencies.append(clock() - started)
                if response.status == 200:
                    self.acknowledged += 1
                else:
                    self.failed[f"HTTP {response.status}"] += 1
        finally:
            conn.close()


# -- one phase: the clients against one app ------------------------------------------------------------------------


def _redis_figures(probe: redis.Redis) -> tuple[int, float]:
    stats, cpu = probe.info("stats"), probe.info("cpu")
    return int(stats["total_commands_processed"]), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def _tally(clients: list[Client], held: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Increments acknowledged (+1 for an own session's creating request) against the counts the sessions hold."""
    increments = lost = extra = 0
    for client in clients:
        wanted = client.acknowledged + (0 if client.shared else 1)
        count = held[client.cookie].get(client.key, 0)
        increments += wanted
        lost += max(0, wanted - count)
        extra += max(0, count - wanted)  # the app saved an increment its client never saw acknowledged
    return {"sessions": len({c.cookie for c in clients}), "increments": increments, "lost": lost, "extra": extra}


def phase(app: AppServer, args: argparse.Namespace, seconds: float, probe: redis.Redis) -> dict[str, Any]:
    """The clients against ``app`` for ``seconds``, then every session read back."""
    port, own = app.port, args.clients - args.shared
    start = threading.Barrier(args.clients + 1)
    clients = [Client(port, new_session(port, f"c{n}"), f"c{n}", False, start) for n in range(own)]
    logins = []
    for group in range(args.shared // args.group):
        cookie, login = logged_in(port, "seed", f"user-{group}")
        logins.append(login)
        members = range(own + group * args.group, own + (group + 1) * args.group)
        clients += [Client(port, cookie, f"c{n}", True, start) for n in members]
    for client in clients:
        client.start()
    commands, redis_cpu = _redis_figures(probe)
    cpu = app.cpu_seconds()
    began = time.perf_counter()
    for client in clients:
        client.deadline = began + seconds
    start.wait()
    for client in clients:
        client.join(seconds + 2 * TIMEOUT)
    elapsed = time.perf_counter() - began
    cpu = app.cpu_seconds() - cpu
    commands_after, redis_cpu_after = _redis_figures(probe)
    held: dict[str, dict[str, Any]] = {}
    for cookie in {client.cookie for client in clients}:
        status, body, _ = call(port, "GET", "/session", cookie)
        held[cookie] = body if status == 200 and isinstance(body, dict) else {}
    requests = sum(len(client.latencies) for client in clients)
    failed: Counter[str] = sum((client.failed for client in clients), Counter())
    return {
        "seconds": round(elapsed, 3),
        "requests": requests,
        "requests_per_s": round(requests / elapsed, 1),
        "failed": dict(failed),
        "latency": percentiles([s for c in clients for s in c.latencies]),
        "latency_own": percentiles([s for c in clients if not c.shared for s in c.latencies]),
        "latency_shared": percentiles([s for c in clients if c.shared for s in c.latencies]),
        "app_cpu_ms_per_request": round(1000 * cpu / requests, 3) if requests else None,
        "redis_cpu_us_per_request": round(1e6 * (redis_cpu_after - redis_cpu) / requests, 1) if requests else None,
        "redis_commands_per_request": round((commands_after - commands) / requests, 2) if requests else None,
        "own": _tally([c for c in clients if not c.shared], held),
        "shared": _tally([c for c in clients if c.shared], held),
        "login": {key: all(login[key] for login in logins) for key in logins[0]} if logins else {},
        "_samples": [s for c in clients for s in c.latencies],
    }


# -- the run -------------------------------------------------------------------------------------------------------


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant over its rounds: medians of the rates, latency of every request of every round, lost in total."""
    samples = [s for run in runs for s in run["_samples"]]
    failed: Counter[str] = sum((Counter(run["failed"]) for run in runs), Counter())
    totals = {
        part: {name: sum(run[part][name] for run in runs) for name in ("increments", "lost", "extra")}
        for part in ("own", "shared")
    }
    for part in totals.values():
        part["lost_percent"] = round(100 * part["lost"] / part["increments"], 2) if part["increments"] else 0.0
    return {
        "rounds": len(runs),
        "requests": sum(run["requests"] for run in runs),
        "requests_per_s_median": statistics.median(run["requests_per_s"] for run in runs),
        "requests_per_s_rounds": [run["requests_per_s"] for run in runs],
        "latency": percentiles(samples),
        "app_cpu_ms_per_request_median": statistics.median(run["app_cpu_ms_per_request"] or 0 for run in runs),
        "redis_commands_per_request_median": statistics.median(run["redis_commands_per_request"] or 0 for run in runs),
        "failed": dict(failed),
        "lost": totals["own"]["lost"] + totals["shared"]["lost"],
        "own": totals["own"],
        "shared": totals["shared"],
        "login_ok": all(all(run["login"].values()) for run in runs),
    }


def _ratio(part: dict[str, Any]) -> str:
    return f"{part['lost']}/{part['increments']}"


def table(report: dict[str, Any]) -> str:
    header = (
        f"{'variant':<14} {'round':>5} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'cpu ms':>7} {'cmd/req':>7} "
        f"{'own lost/increments':>20} {'shared lost/increments':>23} {'failed':>6}"
    )
    lines = [header, "-" * len(header)]

    def row(variant: str, label: str, figures: dict[str, Any], median: str = "") -> str:
        latency, own, shared = figures["latency"], figures["own"], figures["shared"]
        rate, cpu = figures[f"requests_per_s{median}"], figures[f"app_cpu_ms_per_request{median}"]
        return (
            f"{variant:<14} {label:>5} {rate:>7} {latency.get('p50_ms', '-'):>7} {latency.get('p99_ms', '-'):>7} "
            f"{cpu:>7} {figures[f'redis_commands_per_request{median}']:>7} {_ratio(own):>20} {_ratio(shared):>23} "
            f"{sum(figures['failed'].values()):>6}"
        )

    lines += [row(run["variant"], str(run["round"]), run) for run in report["rounds"]]
    lines += [row(variant, "all", s, "_median") for variant, s in report["variants"].items()]
    settings = report["settings"]
    lines += [
        f"{settings['clients']} clients ({settings['clients'] - settings['shared']} on own sessions, "
        f"{settings['shared']} in groups of {settings['group']} sharing one), {settings['seconds']} s per round, "
        f"waitress {APP_THREADS} threads; req/s: the median of the rounds on 'all' rows; p50/p99 ms: latency per",
        "request; cpu ms: the app process's CPU per request; cmd/req: Redis commands per request; lost: increments",
        "acknowledged (HTTP 200) that the session does not hold afterwards",
    ]
    for variant, s in report["variants"].items():
        lines.append(
            f"{variant}: lost {s['lost']} updates ({s['own']['lost_percent']}% of own-session increments, "
            f"{s['shared']['lost_percent']}% of shared-session ones); login moved the session: {s['login_ok']}"
        )
    for name, t in report["targets"].items():
        lines.append(f"{'met    ' if t['met'] else 'MISSED '} {name}: {t['measured']} (target {t['target']})")
    return "\n".join(lines)


def _versions(url: str) -> dict[str, Any]:
    probe = create_redis_client(url=url, environ={})
    versions = dict(diagnostics(probe)["versions"])
    probe.close()
    for package in ("Flask", "Flask-Session", "waitress", "Werkzeug"):
        versions[package] = metadata.version(package)
    return versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for web.json (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s per variant (a smoke run)")
    parser.add_argument("--rounds", type=int, help="rounds per variant, interleaved (default 3; --quick 1)")
    parser.add_argument("--seconds", type=float, help="seconds per round (default 5; --quick 1)")
    parser.add_argument("--clients", type=int, default=16, help="client threads (default 16)")
    parser.add_argument("--shared", type=int, default=8, help="of them, clients on shared sessions (default 8)")
    parser.add_argument("--group", type=int, default=4, help="clients sharing one session (default 4)")
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)  # the app's child process
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.redis_url)
        return
    if args.shared % args.group or args.shared > args.clients:
        parser.error("--shared must be a multiple of --group and at most --clients")
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (1.0 if args.quick else 5.0)
    warmup = 0.3 if args.quick else 1.0
    started = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
    report: dict[str, Any] = {"rounds": []}
    with RedisServer("web") as server:
        probe = server.client()
        with AppServer(FMREDIS, server.url) as fm, AppServer(FLASK_SESSION, server.url) as fs:
            apps = {FMREDIS: fm, FLASK_SESSION: fs}
            for variant in VARIANTS:
                phase(apps[variant], args, warmup, probe)
            for n in range(args.rounds):
                for variant in VARIANTS if n % 2 == 0 else VARIANTS[::-1]:
                    print(f"round {n + 1}/{args.rounds}: {variant}, {args.seconds:g} s ...", flush=True)
                    run = phase(apps[variant], args, args.seconds, probe)
                    runs[variant].append(run)
                    report["rounds"].append({"variant": variant, "round": n + 1, **run})
        probe.close()
        report["versions"] = _versions(server.url)
    report["variants"] = {variant: summary(runs[variant]) for variant in VARIANTS}
    for run in report["rounds"]:
        del run["_samples"]
    lost = report["variants"][FMREDIS]["lost"]
    target = {"target": 0, "measured": lost, "met": not lost}
    report["targets"] = {"fmredis lost updates (own and shared sessions)": target}
    report["settings"] = {
        "quick": args.quick,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "warmup_s": warmup,
        "clients": args.clients,
        "shared": args.shared,
        "group": args.group,
        "app": f"examples/flask_app.py under waitress, {APP_THREADS} threads, one child process per variant",
        "load": "client threads, one keep-alive http.client connection each, POST /incr/<own key> back to back",
        "server": "redis-server on 127.0.0.1, no persistence",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print(table(report))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "web.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out / 'web.json'} ({report['elapsed_s']} s)")


if __name__ == "__main__":
    main()
