"""Shared by the Python test clients: compiles proto/*.proto into WORK_DIR/py at test
time (grpc_tools when installed, else protoc --python_out) and opens a grpcio channel
with generic stubs for the service's methods."""
import os
import subprocess
import sys


def load(src, work):
    """Returns (health_pb2, metamorph_pb2) compiled from the sources in src."""
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
    from proto import health_pb2, metamorph_pb2
    return health_pb2, metamorph_pb2


class Stubs:
    """health, generate, info (unary) and stream (server streaming) on one channel."""

    def __init__(self, target, health_pb2, pb, channel=None):
        import grpc
        self.channel = channel if channel is not None else grpc.insecure_channel(target)
        if channel is None:
            grpc.channel_ready_future(self.channel).result(timeout=10)

        def unary(method, req_cls, resp_cls):
            return self.channel.unary_unary(method, request_serializer=req_cls.SerializeToString,
                                            response_deserializer=resp_cls.FromString)

        self.health = unary("/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest,
                            health_pb2.HealthCheckResponse)
        self.generate = unary("/metamorph.v1.MetaMorph/Generate", pb.GenerateRequest, pb.GenerateResponse)
        self.info = unary("/metamorph.v1.MetaMorph/GetModelInfo", pb.ModelInfoRequest, pb.ModelInfo)
        self.stream = self.channel.unary_stream("/metamorph.v1.MetaMorph/GenerateStream",
                                                request_serializer=pb.GenerateRequest.SerializeToString,
                                                response_deserializer=pb.GenerateEvent.FromString)
