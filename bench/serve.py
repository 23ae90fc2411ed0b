"""Serving benchmark: N concurrent clients on loopback against `difflm serve`, batched (rows of
concurrent requests share each model call) and unbatched (``--max-batch 1``: one request at a
time), throughput and latency against concurrency.

Each client sends ``--requests`` completions one after another (the official `openai` client,
non-streamed, fixed seeds: batched and unbatched runs produce the same texts, which the script
checks). Throughput = completion tokens of all requests / wall time of the level; latency = one
request, client side, queueing included.

    python bench/serve.py                        # 1, 4, 16, 64 clients; writes bench/serve.json, serve.png, RESULTS.md
    python bench/serve.py --clients 1 4 --no-write --requests 1    # a smoke run
    python bench/serve.py --latency              # keep-alive check only: reused vs fresh connections
    python bench/serve.py --model dlm-gsm --recommended --max-tokens 128   # a model's own decoding settings

``--recommended`` sends no decoding field (only prompt, max_tokens and seed), so every request runs with
the model's saved settings (its generation_config.json: for dlm-gsm threshold decoding with the block
cache, ~6 tokens per call); a task model gets its task's prompts (test-split GSM questions). Results of
a model other than dlm-adapted go to bench/results/serve_MODEL.json, bench/serve_MODEL.png and a
RESULTS.md block of their own.

``--latency`` times small requests (GET /health and a 2-token completion) on one reused keep-alive
connection against a fresh connection per request; the reused median must be within 2x the fresh
one (a listening socket without TCP_NODELAY added ~40 ms to every reused request: delayed ACKs).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import openai

HERE = Path(__file__).resolve().parent
PROMPTS = ["ROMEO:", "And God said", "KING HENRY:", "JULIET:", "The LORD is", "HAMLET:", "In the beginning", "MACBETH:"]


def start_server(max_batch: int, threads: int, model: str = "dlm-adapted", window: float | None = None,
                 ) -> tuple[subprocess.Popen, str]:
    extra = [] if window is None else ["--batch-window-ms", str(window)]
    proc = subprocess.Popen([sys.executable, "-m", "difflm", "serve", "--model", model, "--port", "0", "--threads", str(threads),
                             "--max-batch", str(max_batch), "--max-queue", "1024", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+", line)
    if not match:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read()}")
    return proc, match.group(0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def task_prompts(model: str, n: int = 64) -> list[str] | None:
    """The prompts of a task model (its task.json names the task): test-split GSM questions as its
    training formatted them; None for a text model."""
    from difflm.bundled import resolve_model
    from difflm.tasks import make_examples
    from difflm.tasks.formatting import sft_texts
    from difflm.tasks.model_task import read_model_task

    path = resolve_model(model)
    task = read_model_task(path) if path.is_dir() else None
    if task is None:
        return None
    if task != "gsm":
        raise SystemExit(f"bench/serve.py has prompts for text models and the gsm task model, not for {task}")
    return [sft_texts(record)[0] for record in make_examples("gsm", n, seed=0, split="test")]


def run_level(url: str, clients: int, requests: int, args: argparse.Namespace) -> dict:
    api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    prompts = args.prompts or PROMPTS
    # the bench's fixed decoding (full canvas, one token per step), or none: the model's saved settings
    decoding = {} if args.recommended else {"temperature": 0.8}

    def client(c: int) -> list[tuple[float, int, str, bool]]:
        out = []
        for r in range(requests):
            start = time.perf_counter()
            try:
                resp = api.completions.create(model=args.model, prompt=prompts[(c * requests + r) % len(prompts)],
                                              max_tokens=args.max_tokens, seed=1000 * c + r, **decoding)
                out.append((time.perf_counter() - start, resp.usage.completion_tokens, resp.choices[0].text, True))
            except openai.APIError as exc:
                out.append((time.perf_counter() - start, 0, str(exc), False))
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [item for chunk in pool.map(client, range(clients)) for item in chunk]
    wall = time.perf_counter() - start
    ok = [r for r in results if r[3]]
    latencies = [r[0] for r in ok]
    tokens = sum(r[1] for r in ok)
    return {"clients": clients, "requests": len(results), "errors": len(results) - len(ok), "wall_s": round(wall, 3),
            "tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
            "p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "p99_s": round(percentile(latencies, 0.99), 3) if latencies else None,
            "texts": [r[2] for r in results]}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, style in (("batched", "o-"), ("unbatched", "s--")):
        rows = results[mode]
        x = [r["clients"] for r in rows]
        left.plot(x, [r["tokens_per_s"] for r in rows], style, label=mode)
        right.plot(x, [r["p50_s"] for r in rows], style, label=f"{mode} p50")
        right.plot(x, [r["p99_s"] for r in rows], style, alpha=0.5, label=f"{mode} p99")
    for ax, title, unit in ((left, "throughput", "completion tokens / s"), (right, "latency per request", "seconds")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    right.set_yscale("log")
    fig.suptitle(f"difflm serve on loopback: bundled {results.get('model', 'dlm-adapted')}, 2-core CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(results: dict, args: argparse.Namespace, command: str) -> str:
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {args.cpus} cores (shared with other work), python "
        f"{platform.python_version()}, server `--threads {args.threads}`  ",
        f"Date: {date.today().isoformat()}",
        "",
        f"Model: {args.model}. Each client sends {args.requests} non-streamed completions in turn (max_tokens {args.max_tokens}, "
        + ("no decoding field: the model's saved settings " + args.settings + ", " if args.recommended else
           "steps = max_tokens, low_confidence, temperature 0.8, ")
        + "fixed seeds) with the official `openai` client; throughput = "
        "completion tokens / wall time, latency per request client side (queue included). Batched: default "
        "`--max-batch 64`; unbatched: `--max-batch 1` (one request at a time).",
        "",
        "| clients | mode | requests | errors | tokens/s | p50 s | p99 s | wall s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for clients in args.clients:
        for mode in ("batched", "unbatched"):
            r = next(r for r in results[mode] if r["clients"] == clients)
            lines.append(f"| {clients} | {mode} | {r['requests']} | {r['errors']} | {r['tokens_per_s']} | {r['p50_s']} | "
                         f"{r['p99_s']} | {r['wall_s']} |")
    lines += ["", "![serving throughput and latency](serve.png)", ""]
    one = next((r for r in results["batched"] if r["clients"] == 1), None)
    if one is not None and 16 in args.clients:
        sixteen = next(r for r in results["batched"] if r["clients"] == 16)
        ratio = sixteen["tokens_per_s"] / one["tokens_per_s"]
        lines.append(f"Targets: batched throughput at 16 clients = {ratio:.2f}x one client's (target >= 3x: "
                     f"{'met' if ratio >= 3 else 'NOT met'}); ")
    if 64 in args.clients:
        errors = sum(r["errors"] for mode in ("batched", "unbatched") for r in results[mode] if r["clients"] == 64)
        lines[-1] += f"errors at 64 clients: {errors} (target 0: {'met' if errors == 0 else 'NOT met'})."
    lines.append(f"Same texts batched and unbatched: {results['same_texts']}.")
    return "\n".join(lines)


def latency(url: str, repeats: int = 30) -> dict:
    """Median seconds per request, fresh connection vs one reused keep-alive connection."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    body = json.dumps({"model": "dlm-adapted", "prompt": "ROMEO:", "max_tokens": 2, "steps": 2, "seed": 1})
    requests = {"health": ("GET", "/health", None), "completion": ("POST", "/v1/completions", body)}
    out = {}
    for name, (method, path, data) in requests.items():
        headers = {"Content-Type": "application/json"} if data else {}
        times = {"fresh": [], "reused": []}
        reused = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        for i in range(repeats + 2):
            for mode in ("fresh", "reused"):
                conn = reused if mode == "reused" else http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
                start = time.perf_counter()
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                response.read()
                if i >= 2:  # the first two are warm-up
                    times[mode].append(time.perf_counter() - start)
                assert response.status == 200, (name, response.status)
                if mode == "fresh":
                    conn.close()
        reused.close()
        fresh_ms, reused_ms = (statistics.median(times[m]) * 1000 for m in ("fresh", "reused"))
        out[name] = {"fresh_ms": round(fresh_ms, 2), "reused_ms": round(reused_ms, 2),
                     "ok": reused_ms <= 2 * fresh_ms}
    return out


def write_latency(result: dict, args: argparse.Namespace) -> None:
    """bench/results/serve_latency.json and the keep-alive section of RESULTS.md."""
    command = "python bench/serve.py " + " ".join(sys.argv[1:])
    record = {"command": command.strip(), "date": date.today().isoformat(), "machine": platform.machine(),
              "python": platform.python_version(), "server_threads": args.threads, "repeats": 30, "result": result}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "serve_latency.json").write_text(json.dumps(record, indent=1) + "\n")
    rows = "\n".join(f"| {name} | {r['fresh_ms']} | {r['reused_ms']} | {'yes' if r['ok'] else 'NO'} |"
                      for name, r in result.items())
    text = (f"### Keep-alive latency\n\nCommand: `{record['command']}` (median of 30 after 2 warm-up requests, "
            f"server on loopback with {args.threads} torch thread(s)); raw numbers in bench/results/serve_latency.json  \n"
            f"Machine: {record['machine']}, python {record['python']}  \nDate: {record['date']}\n\n"
            "| request | fresh connection ms | reused keep-alive connection ms | reused within 2x of fresh |\n"
            f"|---|---:|---:|---|\n{rows}\n")
    path = HERE / "RESULTS.md"
    begin, end = "<!-- serve-latency:begin -->", "<!-- serve-latency:end -->"
    content, section = path.read_text(), f"{begin}\n{text}{end}"
    if begin in content:
        content = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: section, content, flags=re.S)
    else:  # at the end of the Serving section, after its reading
        at = content.index("\n## ", content.index("<!-- serve:end -->"))
        content = content[:at].rstrip("\n") + "\n\n" + section + "\n" + content[at:]
    path.write_text(content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=2, help="requests per client (default 2)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server (default 2)")
    parser.add_argument("--model", default="dlm-adapted", help="bundled name or directory the server serves (default %(default)s)")
    parser.add_argument("--batch-window-ms", type=float, help="the server's --batch-window-ms (default: the server's)")
    parser.add_argument("--recommended", action="store_true",
                        help="send no decoding field: every request runs with the model's saved settings")
    parser.add_argument("--no-write", action="store_true", help="print only: no JSON, plot or RESULTS.md")
    parser.add_argument("--latency", action="store_true",
                        help="only the keep-alive check: reused vs fresh connection medians (exit 1 if reused > 2x)")
    args = parser.parse_args()
    args.prompts = task_prompts(args.model)
    args.settings = ""
    if args.recommended:
        from difflm.bundled import resolve_model
        from difflm.formats import saved_generation_defaults

        saved = saved_generation_defaults(resolve_model(args.model))
        args.settings = "(none saved: the sampler's defaults)" if saved is None else f"`{json.dumps(saved.options)}`"
    if args.latency:
        proc, url = start_server(64, args.threads)
        try:
            result = latency(url)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        for name, r in result.items():
            print(f"{name}: fresh connection {r['fresh_ms']} ms, reused keep-alive connection {r['reused_ms']} ms "
                  f"(median; within 2x: {r['ok']})")
        if not args.no_write:
            write_latency(result, args)
        raise SystemExit(0 if all(r["ok"] for r in result.values()) else 1)
    import os

    args.cpus = os.cpu_count()
    results: dict = {}
    for mode, max_batch in (("batched", 64), ("unbatched", 1)):
        proc, url = start_server(max_batch, args.threads, args.model, args.batch_window_ms)
        try:
            run_level(url, 1, 1, args)  # warm-up
            results[mode] = []
            for clients in args.clients:
                level = run_level(url, clients, args.requests, args)
                print(mode, {k: v for k, v in level.items() if k != "texts"}, flush=True)
                results[mode].append(level)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    results["model"] = args.model
    results["same_texts"] = all(a["texts"] == b["texts"] for a, b in zip(results["batched"], results["unbatched"]))
    print("same texts batched and unbatched:", results["same_texts"])
    command = "python bench/serve.py " + " ".join(sys.argv[1:])
    text = markdown(results, args, command.strip())
    print(text)
    if args.no_write:
        return
    for mode in ("batched", "unbatched"):
        for level in results[mode]:
            level.pop("texts")
    default = args.model == "dlm-adapted" and not args.recommended
    tag = "" if default else f":{Path(args.model).name}{':recommended' if args.recommended else ''}"
    json_path = HERE / "serve.json" if default else HERE / "results" / f"serve_{tag[1:].replace(':', '_')}.json"
    json_path.parent.mkdir(exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    plot_name = "serve.png" if default else f"serve_{tag[1:].replace(':', '_')}.png"
    plot(results, HERE / plot_name)
    text = text.replace("](serve.png)", f"]({plot_name})")
    path = HERE / "RESULTS.md"
    begin, end = f"<!-- serve{tag}:begin -->", f"<!-- serve{tag}:end -->"
    content = path.read_text()
    section = f"{begin}\n{text}\n{end}"
    if begin in content:
        content = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: section, content, flags=re.S)
    elif "<!-- serve:end -->" in content:  # after the default block of the Serving section
        at = content.index("<!-- serve:end -->") + len("<!-- serve:end -->")
        content = content[:at] + f"\n\n{section}" + content[at:]
    else:
        content = content.rstrip("\n") + f"\n\n## Serving\n\n{section}\n"
    path.write_text(content)


if __name__ == "__main__":
    main()
