#!/usr/bin/python3
"""The OpenAI-compatible HTTP door through the official `openai` Python client (pinned in
requirements-openai.txt), compared with the gRPC door on the same running service.
Usage: client_openai.py TARGET SOURCE_DIR WORK_DIR METRICS_ADDR HTTP_ADDR
MM_OPENAI_TEST=main (default): same text, token ids and PNG bytes through both doors,
  streaming, images in and out, both image endpoints, errors, cancellation, SSE framing
  with curl. MM_OPENAI_TEST=limits (a service with a small body limit and queue): 413, 429.
Exits non-zero on any failure."""
import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import openai  # noqa: E402
import pyproto  # noqa: E402

target, src, work, metrics_addr, http_addr = sys.argv[1:6]
mode = os.environ.get("MM_OPENAI_TEST", "main")
base = f"http://{http_addr}/v1"
client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)
health_pb2, pb = pyproto.load(src, work)
stubs = pyproto.Stubs(target, health_pb2, pb)
checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        sys.exit(f"FAIL: {what}")


def grpc_generate(text, image=None, generate_image=False, raw=False, **sampling):
    parts = ([pb.ContentPart(image=image)] if image else []) + [pb.ContentPart(text=text)]
    req = pb.GenerateRequest(messages=[pb.ChatMessage(role="user", parts=parts)], generate_image=generate_image,
                             raw_prompt=raw, sampling=pb.SamplingParams(**sampling))
    return req


def metric(name):
    text = urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.split(" ")[1])
    return 0.0


def wait_for(cond, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return time.time() - t0
        time.sleep(0.05)
    sys.exit(f"FAIL: {what} not within {timeout} s")


def post_raw(path, body, headers=None):
    req = urllib.request.Request(f"http://{http_addr}{path}", data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def main_tests():
    # models and health
    models = client.models.list()
    check([m.id for m in models.data] == ["tiny"], f"models {models}")
    status, _ = urllib.request.urlopen(f"http://{http_addr}/health").status, None
    check(status == 200, "health")

    # chat, greedy and sampled: same text and ids as gRPC
    for sampling in ({"temperature": 0.0}, {"temperature": 0.9, "top_p": 0.9, "top_k": 20}):
        for prompt in ("Describe a cat.", "What is 2 + 2?"):
            r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}],
                                               max_tokens=24, seed=1234, extra_body={"return_token_ids": True,
                                                                                     **({"top_k": sampling["top_k"]} if "top_k" in sampling else {})},
                                               **{k: v for k, v in sampling.items() if k != "top_k"})
            g = stubs.generate(grpc_generate(prompt, max_new_tokens=24, seed=1234, **sampling), timeout=60)
            ids = r.choices[0].model_extra.get("token_ids") if r.choices[0].model_extra else None
            check(r.choices[0].message.content == g.text, f"text differs {sampling} {prompt!r}: "
                  f"{r.choices[0].message.content!r} vs {g.text!r}")
            check(ids == list(g.token_ids), f"ids differ {sampling}: {ids} vs {list(g.token_ids)}")
            check(r.usage.prompt_tokens == g.usage.prompt_tokens and r.usage.completion_tokens == g.usage.completion_tokens,
                  "usage")
            check(r.choices[0].finish_reason == {"stop_string": "stop"}.get(g.finish_reason, g.finish_reason), "finish")
            check(r.object == "chat.completion" and r.id.startswith("chatcmpl-"), "response object")

    # streaming: the deltas add up to the whole answer; usage comes last
    whole = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Tell me a story"}],
                                           max_tokens=30, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Tell me a story"}],
                                                 max_tokens=30, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(text == whole.choices[0].message.content, f"stream {text!r} vs {whole.choices[0].message.content!r}")
    check(chunks[0].choices[0].delta.role == "assistant", "first chunk has the role")
    check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens, "usage chunk")
    check([c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason, "stream finish")

    # an image in: same answer as gRPC with the same bytes
    png = open(os.path.join(src, "tests/golden/vision/images/rgb_300x211.png"), "rb").read()
    jpg = open(os.path.join(src, "tests/golden/vision/images/baseline_45x33.jpg"), "rb").read()
    for data, mime in ((png, "png"), (jpg, "jpeg")):
        url = f"data:image/{mime};base64," + base64.b64encode(data).decode()
        r = client.chat.completions.create(model="tiny", max_tokens=16, temperature=0, seed=1, extra_body={"return_token_ids": True},
                                           messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                                                  {"type": "text", "text": "What is this?"}]}])
        g = stubs.generate(grpc_generate("What is this?", image=data, max_new_tokens=16, seed=1), timeout=60)
        check(r.choices[0].message.content == g.text and r.choices[0].model_extra["token_ids"] == list(g.token_ids),
              f"image answer ({mime}) differs from gRPC")

    # an image out through chat: content parts, the PNG equal to gRPC's
    img_args = {"steps": 3, "guidance": 5.0, "sampler": "ddim", "seed": 77}
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Draw a red cat"}],
                                       max_tokens=70, temperature=0,
                                       extra_body={"modalities": ["text", "image"], "num_inference_steps": 3,
                                                   "guidance_scale": 5.0, "sampler": "ddim", "image_seed": 77})
    content = r.choices[0].message.content
    check(isinstance(content, list) and content[0]["type"] == "image_url", f"image content parts: {str(content)[:200]}")
    http_png = base64.b64decode(content[0]["image_url"]["url"].split(",", 1)[1])
    req = grpc_generate("Draw a red cat", generate_image=True, max_new_tokens=70)
    req.image.CopyFrom(pb.ImageParams(**img_args))
    g = stubs.generate(req, timeout=120)
    check(len(g.images) == 1 and g.images[0].png == http_png and http_png[:8] == b"\x89PNG\r\n\x1a\n",
          "chat image PNG equals gRPC's")
    after = "".join(p["text"] for p in content if p["type"] == "text")
    check(after == g.text, f"text around the image {after!r} vs {g.text!r}")

    # streamed image: text deltas as they come, the image as a content part when ready
    got_img = None
    for c in client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Draw a red cat"}],
                                            max_tokens=70, temperature=0, stream=True,
                                            extra_body={"modalities": ["text", "image"], "num_inference_steps": 3,
                                                        "guidance_scale": 5.0, "sampler": "ddim", "image_seed": 77}):
        if c.choices and isinstance(c.choices[0].delta.content, list):
            got_img = base64.b64decode(c.choices[0].delta.content[0]["image_url"]["url"].split(",", 1)[1])
    check(got_img == http_png, "streamed image PNG equals the whole response's")

    # /v1/images/generations: image k is the gRPC image with seed + k
    ir = client.images.generate(model="tiny", prompt="a blue square", n=2, size="64x64", response_format="b64_json",
                                extra_body={"seed": 5, "num_inference_steps": 3})
    pngs = [base64.b64decode(d.b64_json) for d in ir.data]
    for k in range(2):
        req = grpc_generate("a blue square", generate_image=True, max_new_tokens=64, temperature=0)
        req.image.CopyFrom(pb.ImageParams(steps=3, seed=5 + k))
        g = stubs.generate(req, timeout=120)
        check(len(g.images) == 1 and g.images[0].png == pngs[k], f"images endpoint PNG {k} equals gRPC's")
    check(pngs[0] != pngs[1], "two seeds, two images")

    # /v1/completions: a raw prompt, as gRPC raw_prompt and mm-run --raw
    r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=12, temperature=0,
                                  extra_body={"return_token_ids": True})
    g = stubs.generate(grpc_generate("Once upon a time", raw=True, max_new_tokens=12), timeout=60)
    check(r.choices[0].text == g.text and r.choices[0].model_extra["token_ids"] == list(g.token_ids), "completion vs gRPC")
    text = "".join(c.choices[0].text for c in client.completions.create(model="tiny", prompt="Once upon a time",
                                                                         max_tokens=12, temperature=0, stream=True))
    check(text == g.text, "streamed completion")

    # errors in OpenAI's shape and status
    for exc, kwargs in (
            (openai.NotFoundError, {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
            (openai.BadRequestError, {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 2}),
            (openai.BadRequestError, {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 500}),
            (openai.BadRequestError, {"model": "tiny", "messages": []}),
            (openai.BadRequestError, {"model": "tiny", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]})):
        try:
            client.chat.completions.create(**kwargs)
            check(False, f"{kwargs} accepted")
        except exc as e:
            check(isinstance(e.body, dict) and e.body.get("message"), f"error body {e.body}")
    try:
        client.images.generate(model="tiny", prompt="x", size="1024x1024")
        check(False, "size accepted")
    except openai.BadRequestError as e:
        check("64x64" in e.body["message"], e.body)
    status, body = post_raw("/v1/nope", b"{}")
    check(status == 404 and json.loads(body)["error"]["type"], "unknown route 404")
    status, body = post_raw("/v1/chat/completions", b"{not json")
    check(status == 400 and "JSON" in json.loads(body)["error"]["message"], "malformed JSON 400")
    # a deadline the request cannot meet (a 999-step image; a long text could end early on EOS)
    status, body = post_raw("/v1/chat/completions", json.dumps(
        {"messages": [{"role": "user", "content": "Draw a cat"}], "modalities": ["image"], "max_tokens": 70,
         "num_inference_steps": 999, "timeout": 0.3}).encode())
    check(status == 504, f"deadline -> 504, got {status} {body[:200]}")

    # a client that hangs up cancels its request, down to the decoder pool
    cancelled0 = metric('metamorph_requests_total{status="CANCELLED"}')
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Draw a cat"}],
                                            max_tokens=70, temperature=0, stream=True,
                                            extra_body={"modalities": ["image"], "num_inference_steps": 999})
    next(iter(stream))
    wait_for(lambda: metric('metamorph_pool_jobs_in_flight{pool="decode"}') >= 1, 30, "the decode job to start")
    stream.close()
    dt = wait_for(lambda: metric('metamorph_pool_jobs_in_flight{pool="decode"}') == 0, 10, "the decode job to stop")
    wait_for(lambda: metric('metamorph_requests_total{status="CANCELLED"}') == cancelled0 + 1, 5, "CANCELLED counted")
    print(f"a hung-up stream stopped its 999-step decode {dt:.2f} s after the close")
    # and a text request mid-stream: the running sequences go back to none
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Tell a long story"}],
                                            max_tokens=1500, temperature=0, stream=True)
    it = iter(stream)
    next(it), next(it)
    stream.close()
    wait_for(lambda: metric("metamorph_running_sequences") == 0, 10, "the cancelled sequence to leave")
    wait_for(lambda: metric('metamorph_requests_total{status="CANCELLED"}') == cancelled0 + 2, 5, "both counted")
    # a gRPC client that cancels is counted too (metamorph_requests_total, status CANCELLED)
    c0 = metric('metamorph_requests_total{status="CANCELLED"}')
    call = stubs.stream(grpc_generate("Tell a long story", max_new_tokens=1500), timeout=60)
    next(call), next(call)
    call.cancel()
    wait_for(lambda: metric('metamorph_requests_total{status="CANCELLED"}') == c0 + 1, 5, "a cancelled gRPC call counted")

    # the operator's log: one access line per request through either door, and the
    # periodic throughput line (log_stats_ms is 1000 in this service's config)
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                   extra_headers={"X-Request-Id": "oai-log-1"})
    stubs.generate(pb.GenerateRequest(request_id="grpc-log-1", messages=[pb.ChatMessage(role="user", parts=[
        pb.ContentPart(text="Hi")])], sampling=pb.SamplingParams(max_new_tokens=3)), timeout=30)
    # the HTTP door writes its line once libmicrohttpd reports the response sent, which
    # may be after the client has read it: wait for the line rather than race it
    http_line = (r"INFO  mm-coordinator\[\d+\] access_log\.c:\d+ request oai-log-1 http /v1/chat/completions "
                 r"from 127\.0\.0\.1:\d+: OK, prompt \d+, completion 3, images 0, ttft [\d.]+ ms")
    read_log = lambda: open(os.path.join(work, "service.log")).read()  # noqa: E731
    wait_for(lambda: re.search(http_line, read_log()) is not None, 5, "the HTTP access line")
    log = read_log()
    check(re.search(http_line, log), "HTTP access line")
    check(re.search(r"request grpc-log-1 grpc Generate from 127\.0\.0\.1:\d+: OK, prompt \d+, completion 3", log),
          "gRPC access line")
    check(re.search(r"request \S+ http /v1/chat/completions from \S+: CANCELLED", log), "a cancelled request's line")
    check(re.search(r"running \d+, waiting \d+ \(\+\d+ encoding\), prompt [\d.]+ tok/s, generation [\d.]+ tok/s, "
                    r"KV \d+/\d+ blocks", log), "periodic throughput line")
    check(re.search(r'serving "tiny" .*\n.*stage 1 of 2: rank 1 .*\n.*stage 2 of 2: rank 2 .*\n.*gRPC on .*OpenAI HTTP on', log),
          "start-up banner")

    # SSE framing as curl sees it
    out = subprocess.run(["curl", "-sS", "-N", "-D", "-", f"{base}/chat/completions", "-H", "Content-Type: application/json",
                          "-d", json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
                                            "temperature": 0, "stream": True})],
                         capture_output=True, timeout=60, check=True).stdout.decode()  # bytes: keep the CRLFs
    head, _, body = out.partition("\r\n\r\n")
    check("content-type: text/event-stream" in head.lower(), f"SSE content type: {head}")
    events = body.split("\n\n")
    check(events[-1] == "" and events[-2] == "data: [DONE]", f"SSE ends with [DONE]: {body[-80:]!r}")
    for ev in events[:-2]:
        check(ev.startswith("data: ") and "\n" not in ev, f"one data line per event: {ev[:80]!r}")
        json.loads(ev[6:])
    check(len(events) >= 4, "role chunk, deltas, finish chunk")


def limits_tests():
    # a body over http_max_body_mb (2 MiB here): 413 before the server reads it all
    big = os.path.join(work, "big.json")
    with open(big, "w") as f:
        json.dump({"messages": [{"role": "user", "content": "x" * (3 << 20)}]}, f)
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", f"{base}/chat/completions", "-H",
                          "Content-Type: application/json", "--data-binary", "@" + big],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    body, _, status = out.rpartition("\n")
    check(status == "413" and json.loads(body)["error"]["type"] == "request_too_large", f"413: {out[:300]}")
    # admission full (max_queue 1, one sequence per batch): some of 12 at once get 429
    results = []

    def one():
        try:
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Tell a long story"}],
                                           max_tokens=64, temperature=0)
            results.append(200)
        except openai.RateLimitError:
            results.append(429)
        except Exception as e:  # noqa: BLE001
            results.append(repr(e))

    threads = [threading.Thread(target=one) for _ in range(12)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    check(set(results) <= {200, 429} and 429 in results and 200 in results, f"429 under overload: {results}")


if mode == "limits":
    limits_tests()
else:
    main_tests()
print(f"client_openai ({mode}): {checks} checks passed")
