#!/usr/bin/python3
"""The service through Python grpcio: an independent client implementation.
Usage: client_grpcio.py HOST:PORT SOURCE_DIR WORK_DIR. Message classes come from
proto/*.proto at test time (grpc_tools when installed, else protoc --python_out);
the calls use grpcio's generic unary/stream stubs. Exits non-zero on any failure."""
import os
import subprocess
import sys

target, src, work = sys.argv[1:4]
out = os.path.join(work, "py")
os.makedirs(out, exist_ok=True)
protos = ["proto/metamorph.proto", "proto/health.proto"]
try:
    from grpc_tools import protoc
    rc = protoc.main(["protoc", "-I" + src, "--python_out=" + out] + protos)
except ImportError:
    rc = subprocess.call(["protoc", "-I" + src, "--python_out=" + out] + protos)
if rc != 0:
    sys.exit("protoc failed")
sys.path.insert(0, out)

import grpc  # noqa: E402
from proto import health_pb2, metamorph_pb2 as pb  # noqa: E402

ch = grpc.insecure_channel(target)
grpc.channel_ready_future(ch).result(timeout=10)


def unary(method, req_cls, resp_cls):
    return ch.unary_unary(method, request_serializer=req_cls.SerializeToString, response_deserializer=resp_cls.FromString)


health = unary("/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse)
generate = unary("/metamorph.v1.MetaMorph/Generate", pb.GenerateRequest, pb.GenerateResponse)
info = unary("/metamorph.v1.MetaMorph/GetModelInfo", pb.ModelInfoRequest, pb.ModelInfo)
stream = ch.unary_stream("/metamorph.v1.MetaMorph/GenerateStream", request_serializer=pb.GenerateRequest.SerializeToString,
                         response_deserializer=pb.GenerateEvent.FromString)

h = health(health_pb2.HealthCheckRequest(), timeout=5)
assert h.status == health_pb2.HealthCheckResponse.SERVING, h

req = pb.GenerateRequest(request_id="py-1",
                         messages=[pb.ChatMessage(role="user", parts=[pb.ContentPart(text="Describe a cat.")])],
                         sampling=pb.SamplingParams(max_new_tokens=24))
r = generate(req, timeout=30)
assert r.request_id == "py-1" and len(r.token_ids) > 0 and r.finish_reason in ("stop", "length"), r
assert r.usage.completion_tokens == len(r.token_ids) and r.usage.prompt_tokens > 0, r.usage

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
