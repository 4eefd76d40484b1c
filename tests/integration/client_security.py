#!/usr/bin/python3
"""TLS and API keys of the service's doors, through independent clients: Python grpcio
for gRPC, curl for the HTTP door and /metrics. The certificates and the key file are
made by test_security.sh (openssl); MM_SEC_MODE says which service it started:
  main     TLS (certificate for 127.0.0.1 / localhost) + api_keys_file, auth_open "health"
  expired  TLS with an expired certificate
  mtls     TLS with tls_client_ca: clients need a certificate the test CA signed
Usage: client_security.py HOST:PORT SOURCE_DIR WORK_DIR METRICS HTTP (test_service python)."""
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc  # noqa: E402
import pyproto  # noqa: E402

target, src, work, metrics, http = sys.argv[1:6]
pki = os.environ["MM_SEC_DIR"]
mode = os.environ["MM_SEC_MODE"]
health_pb2, pb = pyproto.load(src, work)
read = lambda name: open(os.path.join(pki, name), "rb").read()  # noqa: E731
KEY1, KEY2 = open(os.path.join(pki, "key1")).read().strip(), open(os.path.join(pki, "key2")).read().strip()
REQ = pb.GenerateRequest(messages=[pb.ChatMessage(role="user", parts=[pb.ContentPart(text="Describe a cat.")])],
                         sampling=pb.SamplingParams(max_new_tokens=4))


def stubs(creds=None, override=None, insecure=False):
    opts = [("grpc.ssl_target_name_override", override)] if override else []
    ch = grpc.insecure_channel(target) if insecure else grpc.secure_channel(target, creds, options=opts)
    return pyproto.Stubs(target, health_pb2, pb, channel=ch)


def code_of(fn, *args, **kw):
    try:
        fn(*args, timeout=10, **kw)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


def curl(url, *args):
    """HTTP status of a GET with curl (000: no HTTP exchange, e.g. a refused handshake)."""
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", *args, url],
                       capture_output=True, text=True)
    return r.stdout.strip()


def bearer(key):
    return (("authorization", "Bearer " + key),)


ca = grpc.ssl_channel_credentials(root_certificates=read("ca.pem"))
if mode == "expired":
    s = stubs(ca)
    c = code_of(s.health, health_pb2.HealthCheckRequest())
    assert c == grpc.StatusCode.UNAVAILABLE, "an expired server certificate was accepted: %s" % c
    assert curl("https://%s/health" % http, "--cacert", os.path.join(pki, "ca.pem")) == "000", "curl took it"
    print("expired certificate: refused by grpcio and curl")
    sys.exit(0)

if mode == "mtls":
    assert code_of(stubs(ca).health, health_pb2.HealthCheckRequest()) == grpc.StatusCode.UNAVAILABLE, \
        "a client without a certificate got through"
    mine = grpc.ssl_channel_credentials(read("ca.pem"), read("client.key"), read("client.pem"))
    assert code_of(stubs(mine).generate, REQ) == grpc.StatusCode.OK
    rogue = grpc.ssl_channel_credentials(read("ca.pem"), read("rogue.key"), read("rogue.pem"))
    assert code_of(stubs(rogue).health, health_pb2.HealthCheckRequest()) == grpc.StatusCode.UNAVAILABLE, \
        "a client certificate from another CA got through"
    cacert = ["--cacert", os.path.join(pki, "ca.pem")]
    assert curl("https://%s/v1/models" % http, *cacert) in ("401", "000"), "HTTP without a client certificate"
    got = curl("https://%s/v1/models" % http, *cacert, "--cert", os.path.join(pki, "client.pem"),
               "--key", os.path.join(pki, "client.key"))
    assert got == "200", got
    print("mutual TLS: clients without a certificate or with another CA's refused, the test CA's served")
    sys.exit(0)

# --- main: TLS + API keys
s = stubs(ca)
assert s.health(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
r = s.generate(REQ, timeout=30, metadata=bearer(KEY1))
assert len(r.token_ids) > 0, r
assert code_of(s.generate, REQ) == grpc.StatusCode.UNAUTHENTICATED, "no key"
assert code_of(s.generate, REQ, metadata=bearer("not-a-key-0123456789")) == grpc.StatusCode.UNAUTHENTICATED
assert code_of(s.info, pb.ModelInfoRequest()) == grpc.StatusCode.UNAUTHENTICATED, "GetModelInfo without a key"
try:
    s.generate(REQ, timeout=10, metadata=bearer("wrong-key-0123456789"))
except grpc.RpcError as e:
    assert e.details() == "missing or invalid API key", e.details()  # nothing else leaked
# the hashed-at-rest entry (KEY2 is in the file only as blake2b:HEX)
assert code_of(s.info, pb.ModelInfoRequest(), metadata=bearer(KEY2)) == grpc.StatusCode.OK
# TLS refusals: plain text, the system's CAs instead of the test CA, the wrong host name
assert code_of(stubs(insecure=True).health, health_pb2.HealthCheckRequest()) == grpc.StatusCode.UNAVAILABLE
assert code_of(stubs(grpc.ssl_channel_credentials()).health, health_pb2.HealthCheckRequest()) == \
    grpc.StatusCode.UNAVAILABLE, "a certificate from an unknown CA was accepted"
assert code_of(stubs(ca, override="wrong.example").health, health_pb2.HealthCheckRequest()) == \
    grpc.StatusCode.UNAVAILABLE, "a certificate for another host name was accepted"

# the HTTP door and /metrics
cacert = ["--cacert", os.path.join(pki, "ca.pem")]
assert curl("https://%s/v1/models" % http, *cacert, "-H", "Authorization: Bearer " + KEY1) == "200"
assert curl("https://%s/v1/models" % http, *cacert) == "401"
assert curl("https://%s/v1/models" % http, *cacert, "-H", "Authorization: Bearer wrong-key-0123456789") == "401"
assert curl("https://%s/health" % http, *cacert) == "200", "auth_open health: /health without a key"
assert curl("http://%s/v1/models" % http) == "000", "plain HTTP on the TLS port answered"
assert curl("https://%s/v1/models" % http) == "000", "curl trusted the test certificate without the CA"
assert curl("http://%s/metrics" % metrics) == "401", "metrics without a key"
assert curl("http://%s/readyz" % metrics) == "200", "auth_open health: /readyz without a key"
assert curl("http://%s/metrics" % metrics, "-H", "Authorization: Bearer " + KEY1) == "200"

# limits per key (key_max_requests 2): 32 concurrent clients on key1 get OK or
# RESOURCE_EXHAUSTED, never anything else; key2 meanwhile is not limited by key1's use;
# the refusals are counted by key name in /metrics; the HTTP door answers 429 the same way
def gen(key, n):
    return code_of(s.generate, pb.GenerateRequest(messages=REQ.messages, sampling=pb.SamplingParams(max_new_tokens=n)),
                   metadata=bearer(key))


with ThreadPoolExecutor(34) as pool:
    flood = [pool.submit(gen, KEY1, 48) for _ in range(32)]
    other = [pool.submit(gen, KEY2, 4) for _ in range(2)]
    codes, others = [f.result() for f in flood], [f.result() for f in other]
n_ok, n_full = codes.count(grpc.StatusCode.OK), codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
assert n_ok >= 2 and n_full >= 1 and n_ok + n_full == 32, codes
assert others == [grpc.StatusCode.OK] * 2, "key2 was limited by key1's requests: %s" % others
def key_series():
    text = subprocess.run(["curl", "-s", "-H", "Authorization: Bearer " + KEY1, "http://%s/metrics" % metrics],
                          capture_output=True, text=True).stdout
    return text, {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines()
                  if ln.startswith("metamorph_api_key")}


# a call's hold on its key ends when the server has finished the call, which can be just
# after the client read its status: wait for that (5 s at most), then check
for _ in range(50):
    text, series = key_series()
    if series.get('metamorph_api_key_requests_in_flight{key="first"}') == 0:
        break
    time.sleep(0.1)
assert series.get('metamorph_api_key_refused_total{key="first"}') == n_full, (n_full, series)
assert series.get('metamorph_api_key_refused_total{key="second"}') == 0, series
assert series.get('metamorph_api_key_requests_in_flight{key="first"}') == 0, series
assert KEY1 not in text and KEY2 not in text, "a key in the metrics"
ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.pem"))


def post(key):
    body = json.dumps({"model": "tiny", "prompt": "Describe a cat.", "max_tokens": 96}).encode()
    rq = urllib.request.Request("https://%s/v1/completions" % http, data=body, method="POST",
                                headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(rq, context=ctx, timeout=30).status
    except urllib.error.HTTPError as e:
        return e.code


with ThreadPoolExecutor(16) as pool:
    statuses = list(pool.map(post, [KEY1] * 16))
assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses, statuses

# SIGHUP: key1 revoked, key3 added; a broken file keeps the keys in force
key3 = "third-key-abcdefghijklmnop"
with open(os.path.join(pki, "keys.txt"), "a") as f:
    f.write("this line is broken\n")
coord = subprocess.run(["pgrep", "-f", "^[^ ]*mm-coordinator %s/cfg.json" % work], capture_output=True, text=True)  # not mpiexec
pid = int(coord.stdout.split()[0])
os.kill(pid, signal.SIGHUP)
time.sleep(0.5)
assert code_of(s.info, pb.ModelInfoRequest(), metadata=bearer(KEY1)) == grpc.StatusCode.OK, "a bad file dropped keys"
with open(os.path.join(pki, "keys.txt"), "w") as f:
    f.write("# key1 revoked\nsecond %s\nthird %s\n" % (open(os.path.join(pki, "key2.hash")).read().strip(), key3))
os.kill(pid, signal.SIGHUP)
deadline = time.time() + 10
while time.time() < deadline and code_of(s.info, pb.ModelInfoRequest(), metadata=bearer(KEY1)) == grpc.StatusCode.OK:
    time.sleep(0.1)
assert code_of(s.info, pb.ModelInfoRequest(), metadata=bearer(KEY1)) == grpc.StatusCode.UNAUTHENTICATED, "revoked"
assert code_of(s.generate, REQ, metadata=bearer(key3)) == grpc.StatusCode.OK, "the added key"
assert code_of(s.info, pb.ModelInfoRequest(), metadata=bearer(KEY2)) == grpc.StatusCode.OK, "the kept key"
print("TLS + API keys: gRPC, HTTP and metrics refuse what they must; SIGHUP revokes and adds keys")
