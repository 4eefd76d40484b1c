#!/usr/bin/env python3
"""Where a request's time goes, from a coordinator timeline (the trace_file tunable,
coordinator/trace.h; bench/serve --spawn --trace DIR writes one per service). Prints one
JSON object: medians (and p90) of each phase of the requests - arrive -> encoded (the
encoder pool), -> admitted, -> scheduled (waiting for a step), -> first token, -> done;
time to first token and time per output token - and of the steps: round trip (sent ->
result), the last stage's compute time in it (busy), the rest of the round trip
(transport, stage wake-up: round trip - busy, exact at P = 1), the coordinator's gap
between a result and the next step sent while work was waiting, and the fraction of
the wall time with a step in flight. Usage: trace_report.py TRACE.jsonl [...]"""
import json
import statistics
import sys


def stats(v):
    if not v:
        return None
    v = sorted(v)
    return {"n": len(v), "p50": round(statistics.median(v), 3), "p90": round(v[min(len(v) - 1, int(0.9 * len(v)))], 3)}


def report(path):
    req, steps = {}, []
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            if e["ev"] == "step":
                steps.append(e)
            else:
                req.setdefault(e["req"], {})[e["ev"]] = e["t"]
    phases = {"encode": ("arrive", "encoded"), "to_admitted": ("encoded", "admitted"),
              "queue": ("admitted", "scheduled"), "prefill": ("scheduled", "first"), "after_first": ("first", "done"),
              "ttft": ("arrive", "first"), "total": ("arrive", "done")}
    out = {"trace": path, "requests": len(req)}
    for name, (a, b) in phases.items():
        if name == "to_admitted":  # text requests are admitted on arrival
            vals = [r[b] - r.get(a, r["arrive"]) for r in req.values() if b in r and "arrive" in r]
        else:
            vals = [r[b] - r[a] for r in req.values() if a in r and b in r]
        out[name + "_ms"] = stats(vals)
    steps.sort(key=lambda s: s["sent"])
    out["steps"] = len(steps)
    out["step_round_trip_ms"] = stats([s["t"] - s["sent"] for s in steps])
    out["step_busy_ms"] = stats([s["busy"] for s in steps])
    out["step_overhead_ms"] = stats([s["t"] - s["sent"] - s["busy"] for s in steps])
    out["step_rows"] = stats([s["rows"] for s in steps])
    out["step_decodes"] = stats([s["decodes"] for s in steps])
    # the gap from a result to the next step sent, when the next one was sent before 50 ms
    # (longer: nothing was waiting, the service was idle)
    gaps = [b["sent"] - a["t"] for a, b in zip(steps, steps[1:]) if 0 <= b["sent"] - a["t"] < 50]
    out["step_gap_ms"] = stats(gaps)
    if steps:
        wall = max(s["t"] for s in steps) - steps[0]["sent"]
        covered, end = 0.0, steps[0]["sent"]
        for s in steps:  # union of [sent, t]
            start = max(s["sent"], end)
            if s["t"] > start:
                covered += s["t"] - start
            end = max(end, s["t"])
        out["in_flight_fraction"] = round(covered / wall, 3) if wall > 0 else None
    return out


if len(sys.argv) < 2:
    sys.exit(__doc__)
res = [report(p) for p in sys.argv[1:]]
print(json.dumps(res[0] if len(res) == 1 else {"traces": res}))
