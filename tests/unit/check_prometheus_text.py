#!/usr/bin/python3
"""Parses a Prometheus text exposition file with an independent parser
(prometheus_client, Debian python3-prometheus-client) for test_metrics.c.

Checks what the parser lets through: every family has HELP and TYPE, every name
carries the metamorph_ prefix, histograms have ascending cumulative buckets ending
in +Inf with _count equal to the +Inf bucket. Prints {"types": {family: type},
"samples": {"name{k=v,...}": value}} on stdout; exits 1 with a reason otherwise.
A missing prometheus_client is a failure, not a skip (deploy/deps.sh installs it)."""
import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def series_key(sample):
    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
    return f"{sample.name}{{{labels}}}" if labels else sample.name


def check_histogram(family):
    groups = {}
    for s in family.samples:
        rest = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        groups.setdefault(rest, {"buckets": [], "count": None})
        if s.name.endswith("_bucket"):
            groups[rest]["buckets"].append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            groups[rest]["count"] = s.value
    for rest, g in groups.items():
        bounds = [b for b, _ in g["buckets"]]
        counts = [c for _, c in g["buckets"]]
        where = f"{family.name}{dict(rest)}"
        if not bounds or bounds[-1] != math.inf:
            raise ValueError(f"{where}: no +Inf bucket")
        if bounds != sorted(bounds) or counts != sorted(counts):
            raise ValueError(f"{where}: buckets not ascending and cumulative")
        if g["count"] != counts[-1]:
            raise ValueError(f"{where}: _count {g['count']} != +Inf bucket {counts[-1]}")


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        text = f.read()
    types, samples = {}, {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("metamorph_"):
            raise ValueError(f"{family.name}: no metamorph_ prefix")
        if family.type not in ("counter", "gauge", "histogram") or not family.documentation:
            raise ValueError(f"{family.name}: type {family.type!r}, help {family.documentation!r}")
        if family.name in types:
            raise ValueError(f"{family.name}: declared twice")
        types[family.name] = family.type
        if family.type == "histogram":
            check_histogram(family)
        for s in family.samples:
            key = series_key(s)
            if key in samples:
                raise ValueError(f"{key}: sample repeated")
            samples[key] = s.value
    json.dump({"types": types, "samples": samples}, sys.stdout)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # any parse or check error: say which, fail
        print(f"check_prometheus_text: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
