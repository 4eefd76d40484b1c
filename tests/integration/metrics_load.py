#!/usr/bin/python3
"""Issue 8's metrics check against a running service: sends a known load (text requests,
invalid requests, understanding requests with one image sent twice, generation requests
with PNGs), scrapes /metrics while it runs and after, parses every scrape with the
independent prometheus_client parser, and checks that the counters agree exactly with
what was sent and that /healthz and /readyz mirror the health service.
Usage: metrics_load.py HOST:PORT SOURCE_DIR WORK_DIR METRICS_HOST:PORT. Exits non-zero
on any failure."""
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc  # noqa: E402
import pyproto  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

target, src, work, metrics_addr = sys.argv[1:5]
health_pb2, pb = pyproto.load(src, work)
stubs = pyproto.Stubs(target, health_pb2, pb)
image = open(os.path.join(src, "assets/images/example.png"), "rb").read()


def http_get(path):
    try:
        with urllib.request.urlopen("http://%s%s" % (metrics_addr, path), timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def scrape():
    """{(name, frozenset(labels)): value} of one /metrics scrape, parsed by prometheus_client."""
    code, ctype, text = http_get("/metrics")
    assert code == 200 and ctype.startswith("text/plain"), (code, ctype)
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def request(parts, max_new=8, generate_image=False):
    return pb.GenerateRequest(messages=[pb.ChatMessage(role="user", parts=parts)],
                              sampling=pb.SamplingParams(max_new_tokens=max_new),
                              image=pb.ImageParams(steps=5), generate_image=generate_image)


text_req = request([pb.ContentPart(text="Tell me a story.")])
image_req = request([pb.ContentPart(image=image), pb.ContentPart(text="What is this?")], max_new=4)
draw_req = request([pb.ContentPart(text="Draw a cat.")], max_new=70, generate_image=True)
bad_req = pb.GenerateRequest()  # no messages: INVALID_ARGUMENT

code, _, body = http_get("/healthz")
assert code == 200, (code, body)
code, _, body = http_get("/readyz")
assert code == 200 and "SERVING" in body, (code, body)
code, _, _ = http_get("/nope")
assert code == 404, code

before = scrape()
N_TEXT, N_BAD, N_IMAGE, N_DRAW = 12, 5, 2, 3
stop = threading.Event()
scrapes = []


def scraper():
    while not stop.is_set():
        scrapes.append(scrape())


th = threading.Thread(target=scraper)
th.start()
tokens, images = 0, 0
with ThreadPoolExecutor(max_workers=6) as ex:
    ok = [ex.submit(stubs.generate, r, timeout=60) for r in [text_req] * N_TEXT + [draw_req] * N_DRAW]
    bad = [ex.submit(stubs.generate, bad_req, timeout=10) for _ in range(N_BAD)]
    for f in ok:
        r = f.result()
        tokens += len(r.token_ids)  # visual tokens are -1 entries
        images += len(r.images)
        assert all(im.png[:4] == b"\x89PNG" for im in r.images), "a generated image without PNG bytes"
    for f in bad:
        try:
            f.result()
            sys.exit("an empty request must fail")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
# the same image twice, one after the other: the second is an embedding-cache hit
for _ in range(N_IMAGE):
    r = stubs.generate(image_req, timeout=60)
    tokens += len(r.token_ids)  # visual tokens are -1 entries
stop.set()
th.join()
assert len(scrapes) >= 3, "too few scrapes during the load: %d" % len(scrapes)



def checks_against(after):
    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)
    n_ok = N_TEXT + N_DRAW + N_IMAGE
    return [
        ("requests OK", delta("metamorph_requests_total", status="OK"), n_ok),
        ("requests INVALID_ARGUMENT", delta("metamorph_requests_total", status="INVALID_ARGUMENT"), N_BAD),
        ("duration observations", delta("metamorph_request_duration_seconds_count"), n_ok + N_BAD),
        ("TTFT observations", delta("metamorph_ttft_seconds_count"), n_ok),
        ("images", delta("metamorph_generated_images_total"), images),
        ("tokens", delta("metamorph_generated_tokens_total"), tokens),
        ("embedding-cache hits", delta("metamorph_embed_cache_hits_total"), N_IMAGE - 1),
        ("embedding-cache misses", delta("metamorph_embed_cache_misses_total"), 1),
    ]


assert images == N_DRAW, images
# gauges and the counters mirrored from the pools are refreshed every 50 ms: a few
# scrapes may pass before they catch up; the request counters are exact at once
for attempt in range(50):
    after = scrape()
    if all(got == want for _, got, want in checks_against(after)):
        break
    time.sleep(0.1)
for what, got, want in checks_against(after):
    assert got == want, "%s: metrics say %s, the test sent %s" % (what, got, want)
n_ok = N_TEXT + N_DRAW + N_IMAGE
for pool in ("encode", "decode"):
    assert value(after, "metamorph_pool_workers", pool=pool) == 1, (pool, value(after, "metamorph_pool_workers", pool=pool))
assert value(after, "metamorph_kv_blocks_capacity") > 0
assert value(after, "metamorph_stage_busy_seconds_total", stage="1") > 0
for s in scrapes:  # counters never go backwards during the load
    assert value(s, "metamorph_requests_total", status="OK") <= value(after, "metamorph_requests_total", status="OK")
print("metrics: %d scrapes parsed by prometheus_client; counters agree with the load (%d requests, %d tokens, %d images)"
      % (len(scrapes) + 2, n_ok + N_BAD, tokens, images))
