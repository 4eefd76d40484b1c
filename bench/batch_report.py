#!/usr/bin/env python3
"""bench/batch's JSON: reads the run directories bench/batch.sh left (the decoder worker
count, the batch's start and end times, `mmctl info` and /metrics before and after,
the job file and DIR/results.jsonl) and prints one JSON object: per decoder worker count
the median over repeats of wall seconds, captions/s, images/s and each LLM stage's busy
fraction (busy seconds delta / wall), failures, and the ratios to the first count."""
import argparse
import json
import os
import statistics
import sys


def fail(msg):
    sys.exit(f"batch_report: {msg}")


def read(run, name):
    try:
        with open(os.path.join(run, name)) as f:
            return f.read()
    except OSError as e:
        fail(f"{run}: {e}")


def counters(text):
    """Unlabelled samples of Prometheus text: name -> value."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#") and "{" not in parts[0]:
            out[parts[0]] = float(parts[1])
    return out


def one_run(run):
    wall = float(read(run, "t1")) - float(read(run, "t0"))
    info0, info1 = json.loads(read(run, "info0.json")), json.loads(read(run, "info1.json"))
    busy = [(b["busy_ms"] - a["busy_ms"]) * 1e-3 / wall for a, b in zip(info0["stages"], info1["stages"])]
    m0, m1 = counters(read(run, "metrics0.txt")), counters(read(run, "metrics1.txt"))
    delta = {k: m1.get("metamorph_" + k, 0) - m0.get("metamorph_" + k, 0)
             for k in ("embed_cache_hits_total", "embed_cache_misses_total", "generated_images_total")}
    tasks = {}
    for line in read(run, "job.jsonl").splitlines():
        j = json.loads(line)
        tasks[j["id"]] = j["task"]
    results = {}
    for line in read(run, "out/results.jsonl").splitlines():
        r = json.loads(line)
        results[r["id"]] = r
    ok = [r for r in results.values() if r["status"] == "ok"]
    caption_ms = [r["total_ms"] for r in ok if tasks.get(r["id"]) == "caption"]
    generate_ms = [r["total_ms"] for r in ok if tasks.get(r["id"]) == "generate"]
    images = sum(len(r["images"]) for r in ok)
    return {
        "decoders": int(read(run, "decoders")),
        "wall_s": wall,
        "captions_per_s": len(caption_ms) / wall,
        "images_per_s": images / wall,
        "lines_per_s": len(ok) / wall,
        "llm_busy_fraction": busy,
        "failures": len(tasks) - len(ok),
        "caption_total_ms_median": statistics.median(caption_ms) if caption_ms else None,
        "generate_total_ms_median": statistics.median(generate_ms) if generate_ms else None,
        "embed_cache_hits": delta["embed_cache_hits_total"],
        "embed_cache_misses": delta["embed_cache_misses_total"],
        "images_counted_by_service": delta["generated_images_total"],
    }


def median_of(runs, key):
    vals = [r[key] for r in runs if r[key] is not None]
    return round(statistics.median(vals), 4) if vals else None


def summary(runs):
    n_stages = len(runs[0]["llm_busy_fraction"])
    per_stage = [round(statistics.median(r["llm_busy_fraction"][k] for r in runs), 4) for k in range(n_stages)]
    s = {k: median_of(runs, k) for k in ("wall_s", "captions_per_s", "images_per_s", "lines_per_s",
                                          "caption_total_ms_median", "generate_total_ms_median")}
    s["llm_busy_fraction"] = {"per_stage": per_stage, "mean": round(statistics.mean(per_stage), 4)}
    for k in ("failures", "embed_cache_hits", "embed_cache_misses", "images_counted_by_service"):
        s[k] = int(sum(r[k] for r in runs))
    s["wall_s_each"] = [round(r["wall_s"], 3) for r in runs]
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--job", required=True, help="the job's settings (batch_job.py's JSON)")
    ap.add_argument("--setting", action="append", default=[], help="KEY=VALUE added to the settings")
    ap.add_argument("runs", nargs="+", help="run directories")
    a = ap.parse_args()
    settings = json.loads(read(os.path.dirname(a.job) or ".", os.path.basename(a.job)))
    for kv in a.setting:
        k, _, v = kv.partition("=")
        settings[k] = int(v) if v.lstrip("-").isdigit() else v
    by_workers = {}
    for run in a.runs:
        r = one_run(run)
        by_workers.setdefault(r["decoders"], []).append(r)
    counts = sorted(by_workers)
    out = {"bench": "batch", "settings": settings}
    for n in counts:
        out[f"decoders_{n}"] = summary(by_workers[n])
    base = out[f"decoders_{counts[0]}"]
    for n in counts[1:]:
        cur = out[f"decoders_{n}"]
        out[f"ratio_{n}_vs_{counts[0]}"] = {
            k: round(cur[k] / base[k], 3) if base[k] else None
            for k in ("captions_per_s", "images_per_s", "wall_s")
        } | {"llm_busy_mean": round(cur["llm_busy_fraction"]["mean"] / base["llm_busy_fraction"]["mean"], 3)
             if base["llm_busy_fraction"]["mean"] else None}
    out["failures"] = sum(out[f"decoders_{n}"]["failures"] for n in counts)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
