#!/usr/bin/python3
"""The service through Python grpcio: an independent client implementation.
Usage: client_grpcio.py HOST:PORT SOURCE_DIR WORK_DIR. Message classes come from
proto/*.proto at test time (pyproto.py); the calls use grpcio's generic unary/stream
stubs. Exits non-zero on any failure."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc  # noqa: E402
import pyproto  # noqa: E402

target, src, work = sys.argv[1:4]
health_pb2, pb = pyproto.load(src, work)
stubs = pyproto.Stubs(target, health_pb2, pb)
health, generate, info, stream = stubs.health, stubs.generate, stubs.info, stubs.stream

h = health(health_pb2.HealthCheckRequest(), timeout=5)
assert h.status == health_pb2.HealthCheckResponse.SERVING, h

req = pb.GenerateRequest(request_id="py-1",
                         messages=[pb.ChatMessage(role="user", parts=[pb.ContentPart(text="Describe a cat.")])],
                         sampling=pb.SamplingParams(max_new_tokens=24))
r = generate(req, timeout=30)
assert r.request_id == "py-1" and len(r.token_ids) > 0 and r.finish_reason in ("stop", "length"), r
assert r.usage.completion_tokens == len(r.token_ids) and r.usage.prompt_tokens > 0, r.usage
# no request_id: the server makes one (16 hex digits), as the proto promises
anon = generate(pb.GenerateRequest(messages=req.messages, sampling=pb.SamplingParams(max_new_tokens=2)), timeout=30)
assert len(anon.request_id) == 16 and all(ch in "0123456789abcdef" for ch in anon.request_id), anon.request_id

ids, text, final = [], "", None
for ev in stream(req, timeout=30):
    kind = ev.WhichOneof("event")
    if kind == "delta":
        ids += list(ev.delta.token_ids)
        text += ev.delta.text
    elif kind == "final":
        final = ev.final
assert ids == list(r.token_ids), (ids, list(r.token_ids))
assert text == r.text, (text, r.text)
assert final is not None and final.usage.completion_tokens == len(ids) and final.timings.ttft_ms > 0, final

try:
    generate(pb.GenerateRequest(), timeout=5)
    sys.exit("an empty request must fail")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty" in e.details(), e

m = info(pb.ModelInfoRequest(), timeout=5)
assert m.n_layers > 0 and len(m.stages) == 2 and m.kv_blocks_used == 0 and m.serving, m
print("python grpcio client: Generate, GenerateStream, Health, GetModelInfo OK")
