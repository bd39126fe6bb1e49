#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the udt_endpoint and udt_conn
targets (see the record formats at the top of each target). Run from
links/fuzz: python3 seeds/make_seeds.py"""
import os
import struct

def rec(sel, body):
    return bytes([sel]) + struct.pack(">H", len(body)) + body

def u16(n): return struct.pack(">H", n)
def u32(n): return struct.pack(">I", n)
def u64(n): return struct.pack(">Q", n)

CELL_LEN = 514

def ack(delay, max_cells, ranges):
    out = bytes([1]) + u32(delay) + u64(max_cells) + bytes([len(ranges)])
    for lo, hi in ranges:
        out += u64(lo) + u64(hi)
    return out

def write(target, name, data):
    d = os.path.join("seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

# udt_endpoint: selector bits 0-1 source, bit 2 patch cid, bit 3 clock, bit 4 genuine HS_FIN.
msg1 = bytes(range(32))
init = bytes([1]) + u64(0) + u64(9) + bytes([0]) + msg1
write("udt_endpoint", "init_repeat", rec(0x05, init))           # repeated HS_INIT of the answered initiator
write("udt_endpoint", "fin_forged", rec(0x05, bytes([3]) + u64(0) + bytes(64)))
write("udt_endpoint", "cookie", rec(0x04, bytes([5]) + u64(0) + bytes(16)))
write("udt_endpoint", "resp_forged", rec(0x04, bytes([2]) + u64(0) + u64(1) + u64(2) + bytes(96)))
write("udt_endpoint", "complete_then_data",
      rec(0x15, bytes([4]) + u64(0) + u64(0) + bytes(40)) + rec(0x08, b"") + rec(0x0c, bytes(0)))
flood = b"".join(rec(0x02, bytes([1]) + u64(1000 + i) + u64(5) + bytes([0]) + msg1) for i in range(66))
write("udt_endpoint", "init_flood", flood)
write("udt_endpoint", "timeouts", rec(0x08, bytes(0)) + struct.pack(">BH", 0x08, 11000))

# udt_conn: low 3 bits op; 0/1 sealed DATA (bit 3 explicit pn, bit 4 extra cell).
def data(frames, sel=0, pn=None):
    body = b"" if pn is None else u64(pn)
    return bytes([sel | (0x08 if pn is not None else 0)]) + body + u16(len(frames)) + frames

def data_cell(seq, circ, fill, frames=b""):
    return bytes([0x10]) + u16(len(frames)) + frames + u32(seq) + u32(circ) + bytes([fill])

write("udt_conn", "ping", data(bytes([3])))
write("udt_conn", "cells_in_order", data_cell(0, 1, 7) + data_cell(1, 1, 8) + bytes([5]))
write("udt_conn", "cells_reordered", data_cell(2, 1, 7) + data_cell(0, 1, 8) + data_cell(1, 1, 9) + bytes([5]))
write("udt_conn", "queue_and_ack",
      bytes([4, 20]) + bytes([3, 5]) + data(ack(10, 1000, [(0, 3)])) + bytes([3, 50]) + data(ack(0, 5000, [(8, 9), (5, 6), (0, 3)])))
write("udt_conn", "ack_huge", bytes([4, 3]) + data(ack(0xffffffff, 2**64 - 1, [(2**64 - 2, 2**64 - 1), (0, 0)])))
write("udt_conn", "capacity_pair", data(bytes([5]) + u64(10**9)) + data(bytes([6, 3])))
write("udt_conn", "close", data(bytes([4])) + bytes([3, 200]) + bytes([0x0b, 30]))
write("udt_conn", "replay", data(bytes([3]), pn=5) + data(bytes([3]), pn=5) + data(bytes([3]), pn=2**64 - 1))
write("udt_conn", "local_close", bytes([4, 5]) + bytes([6]) + bytes([3, 10]) + data(ack(0, 100, [(0, 10)])) + bytes([3, 100]))
write("udt_conn", "stranger", bytes([7]) + u16(30) + bytes(30) + bytes([0x0a]) + u16(40) + bytes([4]) + bytes(39))
