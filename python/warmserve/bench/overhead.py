"""`warmserve bench overhead`: what the controller adds to each request, and requests/s through it.

Side by side in one run, on the same demo model (the smallest), each request a one-token prompt asking for one
token (max_tokens=1, greedy), so the engine does the least a real request can ask (one prefill step of one token,
batched across requests) and the rest is path:

- ``zmq_rtt``: a bare ZeroMQ round trip to a worker (Abort of an unknown id, answered Ok).
- ``direct``: Generate straight to a worker over ZeroMQ (ZeroMQ + the engine's step), no controller.
- ``http``: the same request through `warmserve serve` (HTTP, JSON, tokenize, route, ZeroMQ, the worker's
  engine step, detokenize, JSON back), from an HTTP/1.1 keep-alive client.
- ``added``: per request, the client's latency minus the worker's share that the controller measured between
  sending Generate and receiving the final token (reported in the Server-Timing header): HTTP both ways, parsing,
  tokenizing, routing, detokenizing, the response, and the asyncio and ZeroMQ handling in the controller. Paired
  per request, the engine step and its noise cancel out; ``direct`` - ``zmq_rtt`` gives the engine step itself.
- ``in_controller``: the controller's own span for the request (its HTTP handler's time minus the worker's
  share), as it reports in Server-Timing; ``added`` - ``in_controller`` is the HTTP stack and process wake-ups
  on both ends.
- The controller's parts in-process: request parsing, tokenizing, ``policy.route`` and the response body.
- Throughput: requests/s through the controller (a separate client process, many connections), and straight to a
  worker over ZeroMQ (the engine's own limit on this machine), for the same requests.

Sequential latency requests alternate between ``direct`` and ``http`` so drift on a shared machine hits both.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from warmserve.errors import InvalidArgumentError

MODEL = "llama-20m"
#: One token in, one token out: the least engine work a real request can ask for.
PROMPT = "a"


def add_arguments(p) -> None:
    p.add_argument("--json", metavar="PATH", help="write the results here")
    p.add_argument("--plot", metavar="PATH", help="latency CDF plot (default: next to --json, .png)")
    p.add_argument("--requests", type=int, default=300, help="sequential requests per path (default 300)")
    p.add_argument("--duration-s", type=float, default=6.0, help="length of each throughput run (default 6)")
    p.add_argument("--concurrency", type=int, default=64, help="connections in the throughput runs (default 64)")
    p.add_argument("--client-procs", type=int, default=1, help="client processes in the throughput run (default 1)")


def pct(xs, q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))
    return xs[k]


def summary_ms(xs) -> dict:
    return {"p50_ms": pct(xs, 50) * 1e3, "p90_ms": pct(xs, 90) * 1e3, "p99_ms": pct(xs, 99) * 1e3,
            "mean_ms": statistics.fmean(xs) * 1e3, "n": len(xs)}


# ------------------------------------------------------------------------------------------- the pieces


def micro_parts(model_path: str, n: int = 3000) -> dict:
    """The controller's per-request CPU work, each part timed alone in this process."""
    from warmserve.config import ModelSpec
    from warmserve.controller import openai_api as oa
    from warmserve.controller.models import controller_model
    from warmserve.controller.textstream import TextStream
    from warmserve.policy import PolicyConfig, make_policy
    from warmserve.policy.state import ClusterState, InstanceState, ModelInfo

    m = controller_model(ModelSpec(path=model_path))
    body = json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}).encode()
    info = ModelInfo(MODEL, weight_bytes=m.weight_bytes, kv_bytes_per_token=m.kv_bytes_per_token)
    policy = make_policy("warmserve", models=[info], config=PolicyConfig())
    state = ClusterState.uniform(1, [info], gpus_per_server=2, gpu_bytes=1 << 30)
    state.instances["i"] = InstanceState("i", MODEL, (0,), created_s=0.0, ready_s=0.0, kv_blocks_total=64)
    state.queues[MODEL].append(1)  # one request waiting, as when route() is asked about it
    ids = m.tokenizer.encode(PROMPT)

    def timed(fn):
        out = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return out

    def respond():
        ts = TextStream(m.tokenizer.decode)
        ts.push([ids[0]])
        ts.finish()
        oa._enc.encode(oa.completion_body("cmpl-x", MODEL, ts.text, "length", len(ids), 1))

    return {
        "parse": summary_ms(timed(lambda: oa.parse_completion(body))),
        "tokenize": summary_ms(timed(lambda: m.tokenizer.encode(PROMPT))),
        "route": summary_ms(timed(lambda: policy.route(state, MODEL, 10.0, 1))),
        "respond": summary_ms(timed(respond)),
    }


def start_server(tmp: str, model_path: str) -> tuple[subprocess.Popen, str]:
    cfg = os.path.join(tmp, "cluster.toml")
    with open(cfg, "w") as f:
        f.write(f'cpu_workers = 1\ncpu_worker_memory_bytes = 536870912\ncpu_worker_threads = 1\n'
                f'[[models]]\npath = "{model_path}"\n[controller]\nmax_queue = 4096\n[server]\nport = 0\n'
                f'max_concurrent_requests = 4096\n')
    with open(os.path.join(tmp, "serve.log"), "wb") as log:
        # --exit-with-parent: found in review, a SIGKILLed benchmark (no clean-up runs) left this server running
        proc = subprocess.Popen([sys.executable, "-m", "warmserve", "serve", "--config", cfg, "--log-level",
                                 "WARNING", "--exit-with-parent", str(os.getpid())], stdout=subprocess.PIPE,
                                stderr=log, text=True)
    try:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("warmserve serve did not start: "
                               + open(os.path.join(tmp, "serve.log")).read()[-2000:])
        return proc, json.loads(line)["serving"]
    except BaseException:  # Ctrl-C while it starts included: no server outlives the benchmark
        stop_server(proc)
        raise


def stop_server(proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()


def http_once(conn, body: bytes) -> tuple[float, float, float]:
    """(client-side latency, the worker's share and the controller's own time as the controller reports them in
    Server-Timing), seconds."""
    t = time.perf_counter()
    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    dt = time.perf_counter() - t
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data[:300]!r}")
    timing = dict(part.strip().split(";dur=") for part in r.getheader("Server-Timing", "").split(",") if part.strip())
    return dt, float(timing.get("worker", "nan")) / 1e3, float(timing.get("controller", "nan")) / 1e3


def client_main(url: str, concurrency: int, duration_s: float, mode: str, model_or_endpoint: str,
                prompt_ids: list[int]) -> None:
    """Load generator (run in its own process): as many one-token requests as `concurrency` loops finish in
    `duration_s`; prints one JSON line."""
    import asyncio

    async def run_http():
        import aiohttp

        body = json.dumps({"model": model_or_endpoint, "prompt": PROMPT, "max_tokens": 1, "temperature": 0})
        conn = aiohttp.TCPConnector(limit=concurrency)
        lat, errors = [], 0
        async with aiohttp.ClientSession(connector=conn) as s:
            stop = time.perf_counter() + duration_s

            async def loop():
                nonlocal errors
                while time.perf_counter() < stop:
                    t = time.perf_counter()
                    async with s.post(url + "/v1/completions", data=body,
                                      headers={"Content-Type": "application/json"}) as r:
                        await r.read()
                        if r.status == 200:
                            lat.append(time.perf_counter() - t)
                        else:
                            errors += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(concurrency)))
            return lat, errors, time.perf_counter() - t0

    async def run_direct():
        from warmserve import protocol as P
        from warmserve.worker.client import AsyncWorkerClient

        lat, errors = [], 0
        async with AsyncWorkerClient(model_or_endpoint) as c:
            stop = time.perf_counter() + duration_s

            async def loop():
                nonlocal errors
                while time.perf_counter() < stop:
                    t = time.perf_counter()
                    try:
                        stream = await c.generate(MODEL, prompt_ids, P.SamplingParams(max_tokens=1, temperature=0.0))
                        await stream.collect()
                        lat.append(time.perf_counter() - t)
                    except Exception:  # counted: the run reports how many failed
                        errors += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(concurrency)))
            return lat, errors, time.perf_counter() - t0

    lat, errors, wall = asyncio.run(run_http() if mode == "http" else run_direct())
    print(json.dumps({"done": len(lat), "errors": errors, "wall_s": wall, "p50_s": pct(lat, 50),
                      "p99_s": pct(lat, 99)}), flush=True)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(mode: str, target: str, prompt_ids, concurrency: int, duration_s: float, procs: int) -> dict:
    code = ("import sys, json; from warmserve.bench.overhead import client_main; "
            "a = json.loads(sys.argv[1]); client_main(*a)")
    # Exactly --concurrency connections, the remainder one more on the first processes (found in review:
    # concurrency // procs each, at least 1, ran 3 for --concurrency 1 --client-procs 3 and 4 for 5 over 2).
    per = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    ps = [subprocess.Popen([sys.executable, "-c", code,
                            json.dumps([target if mode == "http" else "", n, duration_s, mode,
                                        MODEL if mode == "http" else target, list(prompt_ids)])],
                           stdout=subprocess.PIPE, text=True)
          for n in per]
    outs = [json.loads(p.communicate(timeout=duration_s + 120)[0].strip().splitlines()[-1]) for p in ps]
    done = sum(o["done"] for o in outs)
    wall = max(o["wall_s"] for o in outs)
    return {"requests": done, "errors": sum(o["errors"] for o in outs), "wall_s": wall,
            "req_per_s": done / wall if wall else 0.0, "concurrency": sum(per), "client_procs": procs,
            "p50_ms": statistics.median(o["p50_s"] for o in outs) * 1e3,
            "p99_ms": max(o["p99_s"] for o in outs) * 1e3}


# ------------------------------------------------------------------------------------------------ main


def run(args) -> dict:
    from warmserve.engine.demo import write_demo_models

    model_path = write_demo_models(None, [MODEL])[MODEL]
    print("measuring the controller's parts in-process ...", flush=True)
    parts = micro_parts(model_path)
    # the cluster's config and logs: gone when the run ends, however it ends (Ctrl-C included)
    with tempfile.TemporaryDirectory(prefix="warmserve-overhead-") as tmp:
        print("starting warmserve serve (1 CPU worker) and a bare worker ...", flush=True)
        server, url = start_server(tmp, model_path)
        try:
            return _measure(args, server, url, model_path, parts, tmp)
        finally:
            stop_server(server)


def _measure(args, server, url: str, model_path: str, parts: dict, tmp: str) -> dict:
    import http.client
    import urllib.parse

    from warmserve import protocol as P
    from warmserve.worker.client import WorkerClient
    from warmserve.worker.spawn import spawn_local_worker

    wproc, endpoint = spawn_local_worker("cpu", memory_gib=0.5, threads=1, log_path=os.path.join(tmp, "worker.log"))
    client = WorkerClient(endpoint)
    try:
        client.prewarm(model_path, MODEL)
        client.activate(MODEL)
        from warmserve.controller.models import load_tokenizer

        prompt_ids = load_tokenizer(model_path).encode(PROMPT)
        sampling = P.SamplingParams(max_tokens=1, temperature=0.0)
        u = urllib.parse.urlparse(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        body = json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}).encode()
        for _ in range(30):  # warm both paths: first requests start the instance, fill caches
            http_once(conn, body)
            client.generate(MODEL, prompt_ids, sampling).collect()
            client.abort(10**9)

        print(f"sequential latency, {args.requests} requests per path ...", flush=True)
        lat = {"zmq_rtt": [], "direct": [], "http": [], "http_worker_share": [], "added": [], "in_controller": []}
        for _ in range(args.requests):
            t = time.perf_counter()
            client.abort(10**9)
            lat["zmq_rtt"].append(time.perf_counter() - t)
            t = time.perf_counter()
            client.generate(MODEL, prompt_ids, sampling).collect()
            lat["direct"].append(time.perf_counter() - t)
            total, worker, ctl = http_once(conn, body)
            lat["http"].append(total)
            lat["in_controller"].append(ctl)
            lat["http_worker_share"].append(worker)
            # Paired per request: the engine step (and its noise) cancels out exactly.
            lat["added"].append(total - worker)
        conn.close()

        print(f"throughput, {args.duration_s:.0f} s per path, {args.concurrency} connections ...", flush=True)
        cpu0 = cpu_s(server.pid)
        time.sleep(args.duration_s)  # idle baseline: heartbeats, stats and policy ticks cost CPU without traffic
        idle_cpu = cpu_s(server.pid) - cpu0
        cpu0 = cpu_s(server.pid)
        thr_http = throughput("http", url, prompt_ids, args.concurrency, args.duration_s, args.client_procs)
        ctl_cpu = max(1e-9, cpu_s(server.pid) - cpu0 - idle_cpu * thr_http["wall_s"] / args.duration_s)
        thr_http["controller_idle_cpu_share"] = idle_cpu / args.duration_s
        # The controller's own CPU per request through the real path: what bounds its rate once the engine
        # is not the bottleneck (one core, everything else on other cores).
        thr_http["controller_cpu_ms_per_request"] = ctl_cpu / max(1, thr_http["requests"]) * 1e3
        thr_http["controller_capacity_req_per_s_per_core"] = thr_http["requests"] / ctl_cpu if ctl_cpu else None
        thr_direct = throughput("direct", endpoint, prompt_ids, args.concurrency, args.duration_s, 1)
    finally:
        client.close()
        wproc.terminate()
        wproc.wait()

    s = {k: summary_ms(v) for k, v in lat.items()}
    added = s["added"]
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "model": MODEL, "prompt_tokens": len(prompt_ids), "max_tokens": 1,
        "latency": s,
        "engine_step_ms_p50": s["direct"]["p50_ms"] - s["zmq_rtt"]["p50_ms"],
        "added_by_controller": added,
        "inside_controller": s["in_controller"],
        "added_by_controller_unpaired_p50_ms": s["http"]["p50_ms"] - s["direct"]["p50_ms"],
        "controller_parts": parts,
        "controller_parts_p50_sum_ms": sum(p["p50_ms"] for p in parts.values()),
        "throughput_http": thr_http,
        "throughput_direct_zmq": thr_direct,
        "throughput_ratio_http_vs_direct": thr_http["req_per_s"] / thr_direct["req_per_s"]
        if thr_direct["req_per_s"] else None,
        "goals": {"added_p99_ms": 2.0, "req_per_s": 2000},
        "_raw_s": lat,
    }


#: each series of the plot, named as the printed table names its row (found in review: the legend's names were
#: other words, "Generate straight to worker", "controller's share, paired", for the table's rows)
PLOT_SERIES = (("zmq_rtt", "ZeroMQ round trip (bare)"), ("direct", "worker direct (ZMQ + engine step)"),
               ("http", "through controller (HTTP)"), ("added", "added by the controller"),
               ("in_controller", "of which inside the controller"))


def plot(res: dict, path: str) -> None:
    from warmserve.extras import pyplot
    from warmserve.outputs import save_figure

    plt = pyplot("the overhead benchmark's plot")

    fig, ax = plt.subplots(figsize=(9, 4))
    for k, label in PLOT_SERIES:
        xs = sorted(v * 1e3 for v in res["_raw_s"][k])
        ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=label)
    goal = res["goals"]["added_p99_ms"]
    ax.axvline(goal, color="grey", lw=0.8, ls=":", label=f"goal: added by the controller, p99 < {goal:g} ms")
    ax.set_xscale("log")
    ax.set_xlabel("time per 1-token request (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    n = len(res["_raw_s"]["http"])
    ax.set_title(f"controller overhead, {res['model']}, {res['machine']['cpus']} CPUs, {n} sequential requests "
                 "per path", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    # beside the axes: inside (lower centre) the box covered the lower half of three curves (found in review)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def check_args(args) -> None:
    """What would otherwise fail only after the server started and the requests ran."""
    from warmserve.outputs import check_at_least, check_distinct_outputs, check_output, check_plot

    check_at_least("--requests", args.requests)
    check_at_least("--concurrency", args.concurrency)
    check_at_least("--client-procs", args.client_procs)
    if args.client_procs > args.concurrency:  # each client process holds at least one connection
        raise InvalidArgumentError(f"--client-procs {args.client_procs}: more client processes than --concurrency "
                                   f"{args.concurrency} connections; give at most --client-procs {args.concurrency}",
                                   flag="--client-procs", value=args.client_procs)
    if not (math.isfinite(args.duration_s) and args.duration_s > 0):  # found in review: inf passed `> 0`
        raise InvalidArgumentError(f"--duration-s {args.duration_s:g}: give a finite number > 0 seconds",
                                   flag="--duration-s", value=args.duration_s)
    check_output("--json", args.json)
    check_distinct_outputs(args.json, plot_path(args), derived=None if args.plot else
                           ("--json with .png, no --plot given", "end --json in .json, or give --plot PATH"))
    check_plot("--plot" if args.plot else "--json", plot_path(args),
               None if args.plot else f"{args.json} (it draws {plot_path(args)} beside it)")


def plot_path(args) -> str | None:
    return args.plot or (os.path.splitext(args.json)[0] + ".png" if args.json else None)


def main(args) -> int:
    from warmserve.bench.exit_signals import exit_on_signals

    # SIGTERM and SIGHUP end the run through its clean-up (found in review: a SIGTERM left the `serve` child
    # running, re-parented to init, and the warmserve-overhead-* folder; its --exit-with-parent covers a SIGKILL only)
    with exit_on_signals():
        return _main(args)


def _main(args) -> int:
    check_args(args)
    res = run(args)
    s, a = res["latency"], res["added_by_controller"]
    print()
    print(f"{'path':<34}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
    for k, label in (("zmq_rtt", "ZeroMQ round trip (bare)"), ("direct", "worker direct (ZMQ + engine step)"),
                     ("http", "through controller (HTTP)")):
        print(f"{label:<34}{s[k]['p50_ms']:>9.3f}{s[k]['p90_ms']:>9.3f}{s[k]['p99_ms']:>9.3f}")
    print(f"{'added by the controller':<34}{a['p50_ms']:>9.3f}{a['p90_ms']:>9.3f}{a['p99_ms']:>9.3f}"
          f"   (goal p99 < {res['goals']['added_p99_ms']} ms)")
    c = s["in_controller"]
    print(f"{'  of which inside the controller':<34}{c['p50_ms']:>9.3f}{c['p90_ms']:>9.3f}{c['p99_ms']:>9.3f}")
    print(f"engine step (direct - zmq) p50: {res['engine_step_ms_p50']:.3f} ms")
    print("controller parts, p50 / p99 ms: " + ", ".join(
        f"{k} {v['p50_ms']:.3f}/{v['p99_ms']:.3f}" for k, v in res["controller_parts"].items()))
    th, td = res["throughput_http"], res["throughput_direct_zmq"]
    print(f"throughput through controller: {th['req_per_s']:.0f} req/s ({th['errors']} errors, "
          f"{th['concurrency']} conns)   straight to worker: {td['req_per_s']:.0f} req/s   "
          f"ratio {res['throughput_ratio_http_vs_direct']:.2f}   (goal >= {res['goals']['req_per_s']} req/s)")
    print(f"controller CPU per request: {th['controller_cpu_ms_per_request']:.3f} ms -> at most "
          f"{th['controller_capacity_req_per_s_per_core'] or 0:.0f} req/s per core (engine not the bottleneck)")
    if args.json:
        from warmserve.outputs import write_json_atomic

        out = {k: v for k, v in res.items() if k != "_raw_s"}
        write_json_atomic(args.json, out, indent=2)
    if plot_path(args):
        plot(res, plot_path(args))
    if args.json:
        print(f"wrote {args.json} and {plot_path(args)}")
    return 0
