#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target (docs/fuzzing.md).

Each seed follows the input layout its target reads (fuzz/src/guest.rs,
fuzz/fuzz_targets/*.rs): well-formed cases that reach deep paths at once,
from which the fuzzer mutates. The committed corpora under fuzz/corpus/ are
these seeds plus what fuzzing found, minimised with `cargo fuzz cmin`.

Usage: python3 fuzz/make_seeds.py OUT_DIR   (writes OUT_DIR/<target>/<name>)
"""

import json
import os
import struct
import sys

GUEST_MAC = bytes([0x52, 0x54, 0, 0x12, 0x34, 0x56])
PEER_MAC = bytes([0x52, 0x54, 0, 0x12, 0x34, 0x57])


def u8(v):
    return struct.pack("<B", v)


def u16(v):
    return struct.pack("<H", v)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def be16(v):
    return struct.pack(">H", v)


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(">%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4(src, dst, proto, payload):
    h = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0, bytes(src), bytes(dst)))
    h[10:12] = be16(csum(bytes(h)))
    return bytes(h) + payload


def tcp(payload=b"", sport=1234, dport=80):
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x18, 65535, 0, 0) + payload


def udp(payload=b"", sport=1234, dport=53):
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def eth(dst, src, ethertype, payload, tags=()):
    out = bytes(dst) + bytes(src)
    for tpid, tci in tags:
        out += be16(tpid) + be16(tci)
    return out + be16(ethertype) + payload


def ipv6(src, dst, nh, payload):
    return struct.pack(">IHBB16s16s", 0x60000000, len(payload), nh, 64, bytes(src), bytes(dst)) + payload


def arp(sender_mac, sender_ip, target_ip):
    return struct.pack(">HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, bytes(sender_mac), bytes(sender_ip), b"\0" * 6, bytes(target_ip))


IP_A = [10, 0, 0, 5]
IP_B = [10, 0, 0, 6]
V6_A = bytes.fromhex("20010db8000000000000000000000005")
V6_B = bytes.fromhex("20010db8000000000000000000000006")


def tcp4_frame(n=64, src_ip=IP_A):
    return eth(PEER_MAC, GUEST_MAC, 0x0800, ipv4(src_ip, IP_B, 6, tcp(bytes(i % 251 for i in range(n)))))


def offload(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0):
    return u8(flags) + u8(gso_type) + u16(hdr_len) + u16(gso_size) + u16(csum_start) + u16(csum_offset)


def vnet_hdr(num_buffers=1, **o):
    # struct virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers
    return offload(**o) + u16(num_buffers)


# ---------------------------------------------------------------- vnic rings
F_MRG = 1 << 15
F_EVENT_IDX = 1 << 29
F_INDIRECT = 1 << 28
F_CSUM = 1 << 0
F_GUEST_CSUM = 1 << 1
F_HOST_TSO4 = 1 << 11
F_VERSION_1 = 1 << 32
F_IN_ORDER = 1 << 35

# Ring layout in guest memory (regions 0..0x10000 and 0x20000..0x28000).
RX_DESC, RX_AVAIL, RX_USED = 0x0000, 0x0400, 0x0800
TX_DESC, TX_AVAIL, TX_USED = 0x1000, 0x1400, 0x1800
BUF = 0x4000
OP_WRITE, OP_WRITE16, OP_FRAME, OP_POLL, OP_ARM, OP_RESTART, OP_TAKE, OP_MTU = range(8)


def write_op(addr, data):
    out = b""
    while data:
        part, data = data[:255], data[255:]
        out += u8(OP_WRITE) + u32(addr) + u8(len(part)) + part
        addr += len(part)
    return out


def split_desc(addr, length, flags, nxt):
    return u64(addr) + u32(length) + u16(flags) + u16(nxt)


def vnic_header(features, size_byte, rings, mtu=1500, limited=False):
    out = u64(features) + u8(size_byte) + u16((mtu - 68) % 9200)
    for _ in range(2):
        if limited:
            out += u8(1) + u32(125000) + u16(1000) + u16(3000) + u8(4)
        else:
            out += u8(0)
    for desc, avail, used in rings:
        out += u32(desc) + u32(avail) + u32(used)
    return out


def split_seed(features, mrg=True, indirect=False, limited=False):
    size = 16
    out = vnic_header(features, 4, [(RX_DESC, RX_AVAIL, RX_USED), (TX_DESC, TX_AVAIL, TX_USED)], limited=limited)
    # Guest TX: header + frame in one descriptor, then a split header chain.
    frame = tcp4_frame(100)
    tx_buf = vnet_hdr() + frame
    out += write_op(BUF, tx_buf)
    hdr_addr = BUF + 0x800
    out += write_op(hdr_addr, vnet_hdr(csum_start=0, csum_offset=0))
    out += write_op(hdr_addr + 0x40, frame)
    descs = split_desc(BUF, len(tx_buf), 0, 0) + split_desc(hdr_addr, 12, 1, 2) + split_desc(hdr_addr + 0x40, len(frame), 0, 0)
    if indirect:
        table = split_desc(hdr_addr, 12, 1, 1) + split_desc(hdr_addr + 0x40, len(frame), 0, 0)
        out += write_op(0x3000, table)
        descs += split_desc(0x3000, len(table), 4, 0)
    out += write_op(TX_DESC, descs)
    heads = [0, 1] + ([3] if indirect else [])
    out += write_op(TX_AVAIL, u16(0) + u16(len(heads)) + b"".join(u16(h) for h in heads))
    # Guest RX: buffers posted.
    rx = b"".join(split_desc(0x8000 + i * 0x800, 0x800, 2, 0) for i in range(4))
    out += write_op(RX_DESC, rx)
    out += write_op(RX_AVAIL, u16(0) + u16(4) + b"".join(u16(i) for i in range(4)))
    # The switch has frames for the guest; the engine runs.
    for n in (60, 1514, 3000 if mrg else 200):
        f = eth(GUEST_MAC, PEER_MAC, 0x0800, ipv4(IP_B, IP_A, 17, udp(bytes(n - 42))))
        out += u8(OP_FRAME) + u16(n) + offload() + u8(min(len(f), 255)) + f[:255]
    out += u8(OP_POLL) + u8(63) + u8(OP_TAKE) + u8(OP_POLL) + u8(63)
    out += u8(OP_ARM) + u8(1) + u8(OP_ARM) + u8(0) + u8(OP_RESTART) + u8(1) + u16(0) + u16(0)
    out += u8(OP_POLL) + u8(63)
    del size
    return out


PF_AVAIL, PF_USED, PF_NEXT, PF_WRITE, PF_INDIRECT = 1 << 7, 1 << 15, 1, 2, 4


def packed_desc(addr, length, ident, flags):
    return u64(addr) + u32(length) + u16(ident) + u16(flags)


def packed_seed(features):
    # Packed rings: descriptor ring, driver event area, device event area.
    out = vnic_header(features | (1 << 34), 15, [(RX_DESC, RX_AVAIL, RX_USED), (TX_DESC, TX_AVAIL, TX_USED)])
    frame = tcp4_frame(100)
    tx_buf = vnet_hdr() + frame
    out += write_op(BUF, tx_buf)
    out += write_op(BUF + 0x800, vnet_hdr())
    out += write_op(BUF + 0x840, frame)
    # Slot 0: one descriptor; slots 1-2: a two-descriptor chain (head flags last).
    out += write_op(TX_DESC, packed_desc(BUF, len(tx_buf), 0, PF_AVAIL))
    out += write_op(TX_DESC + 32, packed_desc(BUF + 0x840, len(frame), 1, PF_AVAIL))
    out += write_op(TX_DESC + 16, packed_desc(BUF + 0x800, 12, 1, PF_AVAIL | PF_NEXT))
    rx = b"".join(packed_desc(0x8000 + i * 0x800, 0x800, i, PF_AVAIL | PF_WRITE) for i in range(4))
    out += write_op(RX_DESC, rx)
    for n in (60, 1514):
        f = eth(GUEST_MAC, PEER_MAC, 0x0800, ipv4(IP_B, IP_A, 17, udp(bytes(n - 42))))
        out += u8(OP_FRAME) + u16(n) + offload() + u8(min(len(f), 255)) + f[:255]
    out += u8(OP_POLL) + u8(63) + u8(OP_TAKE) + u8(OP_ARM) + u8(1) + u8(OP_POLL) + u8(63)
    return out


# ---------------------------------------------------------------- vhost-user
def vhost_msg(code, payload=b"", how=0):
    return u8(code) + u8(how) + u16(len(payload)) + payload


def vhost_seed(packed=False):
    qp = 0  # one queue pair
    image = bytearray(4096)
    out = u8(qp) + u16(len(image))
    feats = F_VERSION_1 | F_MRG | F_EVENT_IDX | F_INDIRECT | (1 << 30) | ((1 << 34) if packed else 0)
    proto = (1 << 0) | (1 << 3) | (1 << 4) | (1 << 9) | (1 << 15) | (1 << 16)
    user = 0x7F0000000000
    msgs = [
        vhost_msg(1),
        vhost_msg(15),
        vhost_msg(16, u64(proto)),
        vhost_msg(17),
        vhost_msg(3),
        vhost_msg(18, u32(0) + u32(1)),
        vhost_msg(2, u64(feats)),
        vhost_msg(39, u64(0)),
        vhost_msg(5, u32(1) + u32(0) + u64(0) + u64(0x10000) + u64(user) + u64(0)),
    ]
    for ring in (0, 1):
        base = 0x1000 * (ring + 1)
        msgs += [
            vhost_msg(8, u32(ring) + u32(16)),
            vhost_msg(10, u32(ring) + u32(0x8000 if packed else 0)),
            vhost_msg(9, u32(ring) + u32(0) + u64(user + base) + u64(user + base + 0x800) + u64(user + base + 0x400) + u64(0)),
            vhost_msg(12, u64(ring)),
            vhost_msg(13, u64(ring)),
            vhost_msg(18, u32(ring) + u32(1)),
        ]
    msgs += [vhost_msg(39, u64(0xF)), vhost_msg(20, u64(1500)), vhost_msg(24, u32(0) + u32(12) + u32(0) + bytes(12)), vhost_msg(11, u32(0) + u32(0)), vhost_msg(11, u32(1) + u32(0))]
    return out + bytes(image) + b"".join(msgs)


def vhost_mem_regions_seed():
    out = u8(1) + u16(16) + bytes(16)
    user = 0x7F0000000000
    region = u64(0) + u64(0x10000) + u64(user) + u64(0)
    msgs = [
        vhost_msg(16, u64((1 << 15) | (1 << 3))),
        vhost_msg(36),
        vhost_msg(37, u64(1) + region),
        vhost_msg(37, u64(1) + region),
        vhost_msg(38, u64(1) + region),
        vhost_msg(38, u64(1) + region),
        vhost_msg(6, u64(0x1000) + u64(0)),
        vhost_msg(21),
        vhost_msg(4),
    ]
    return out + b"".join(msgs)


# ---------------------------------------------------------------- others
def rpc_seeds():
    reqs = [
        {"jsonrpc": "2.0", "id": 1, "method": "daemon.status"},
        {"jsonrpc": "2.0", "id": 2, "method": "vnic.add", "params": {"name": "web0", "mac": "52:54:00:00:00:10", "queue_pairs": 2, "allowed_ips": ["10.0.0.5", "2001:db8::5"], "tx_limit": {"bytes_per_sec": 1000000}}},
        {"jsonrpc": "2.0", "id": 3, "method": "vnic.update", "params": {"name": "web0", "mtu": 9000, "allowed_ips": None, "rx_limit": {"packets_per_sec": 1000}, "weight": 5}},
        {"jsonrpc": "2.0", "id": 4, "method": "vnic.stats", "params": {"name": "web0"}},
        {"jsonrpc": "2.0", "id": 5, "method": "group.add", "params": {"name": "g2", "policy": "compacting", "threads": 2, "cpus": [0, 1]}},
        {"jsonrpc": "2.0", "id": 6, "method": "vnic.update", "params": {"name": "web0", "group": "g2"}},
        {"jsonrpc": "2.0", "id": 7, "method": "group.stats", "params": {"name": "g2"}},
        {"jsonrpc": "2.0", "id": 8, "method": "switch.fdb.add", "params": {"mac": "52:54:00:00:00:99", "vnic": "web0"}},
        {"jsonrpc": "2.0", "id": 9, "method": "switch.fdb.list"},
        {"jsonrpc": "2.0", "id": 10, "method": "switch.fdb.remove", "params": {"mac": "52:54:00:00:00:99"}},
        {"jsonrpc": "2.0", "id": 11, "method": "uplink.add", "params": {"name": "up0", "interface": "lo"}},
        {"jsonrpc": "2.0", "id": 12, "method": "vnic.remove", "params": {"name": "web0"}},
        {"jsonrpc": "2.0", "id": 13, "method": "group.remove", "params": {"name": "g2"}},
    ]
    lines = [json.dumps(r) for r in reqs]
    seeds = {"session": "\n".join(lines)}
    seeds["batch"] = json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "vnic.list"}, {"jsonrpc": "2.0", "method": "group.list"}, {"jsonrpc": "2.0", "id": 2, "method": "uplink.list"}, {"jsonrpc": "2.0", "id": 3, "method": "daemon.shutdown"}])
    seeds["errors"] = "\n".join(["{", "[]", '{"jsonrpc":"2.0","id":1,"method":"nope"}', '{"jsonrpc":"2.0","id":[1],"method":"vnic.get","params":[1]}', '{"jsonrpc":"2.0","id":2,"method":"vnic.add","params":{"name":"half","mac":"52:54:00:00:00:40","socket":"/run/x.sock","role":"client"}}'])
    seeds["uplink_update"] = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "uplink.update", "params": {"name": "up0", "overlay": {"local_ip": "192.0.2.1", "remotes": [{"ip": "192.0.2.2", "mac": "02:00:00:00:00:02", "networks": [1]}]}, "tx_limit": None}})
    return {k: v.encode() for k, v in seeds.items()}


def config_seeds(root):
    seeds = {}
    for name in os.listdir(os.path.join(root, "examples")):
        if name.endswith(".json"):
            with open(os.path.join(root, "examples", name), "rb") as f:
                seeds[name[:-5]] = f.read()
    seeds["minimal"] = b'{"groups":[{"name":"g","policy":"spreading"}]}'
    seeds["uplink"] = json.dumps({"uplinks": [{"name": "up0", "interface": "eth0", "queues": [0, 1], "overlay": {"local_ip": "192.0.2.1", "remotes": [{"ip": "192.0.2.2", "mac": "02:00:00:00:00:02", "networks": [7]}], "macs": [{"network": 7, "mac": "02:00:00:00:00:09", "remote": "192.0.2.2"}]}}], "vnics": [{"name": "a", "mac": "02:00:00:00:00:01", "network": 7, "shard": 0}], "switch_shards": 2}).encode()
    return seeds


def wire_seeds():
    head = u16(0) + u16(0) + u16(1) + u8(1) + u16(256)
    frames = {
        "tcp4": tcp4_frame(40),
        "udp6": eth(PEER_MAC, GUEST_MAC, 0x86DD, ipv6(V6_A, V6_B, 17, udp(b"x" * 20))),
        "vlan_arp": eth(b"\xff" * 6, GUEST_MAC, 0x0806, arp(GUEST_MAC, IP_A, IP_B), tags=[(0x8100, 5)]),
        "frag4": eth(PEER_MAC, GUEST_MAC, 0x0800, ipv4(IP_A, IP_B, 17, udp(b"y" * 8))[:6] + b"\x20\x00" + ipv4(IP_A, IP_B, 17, udp(b"y" * 8))[8:]),
        "mac": b"52:54:00:12:34:56",
    }
    return {k: head + v for k, v in frames.items()}


def antispoof_seeds():
    # enforce, count, (kind, address)...
    allow = u8(1) + u8(2) + u8(1) + bytes(IP_A[::-1]) + u8(0) + V6_A
    na = bytes([136, 0, 0, 0]) + bytes([0x20, 0, 0, 0]) + V6_A + bytes([2, 1]) + GUEST_MAC
    hop = bytes([58, 0, 0, 0, 0, 0, 0, 0])
    return {
        "ipv4": allow + tcp4_frame(20),
        "ipv4_qinq": allow + eth(PEER_MAC, GUEST_MAC, 0x0800, ipv4(IP_A, IP_B, 6, tcp()), tags=[(0x88A8, 1), (0x8100, 2)]),
        "arp": allow + eth(b"\xff" * 6, GUEST_MAC, 0x0806, arp(GUEST_MAC, IP_A, IP_B)),
        "nd_advert": allow + eth(PEER_MAC, GUEST_MAC, 0x86DD, ipv6(V6_A, V6_B, 58, na)),
        "nd_advert_ext": allow + eth(PEER_MAC, GUEST_MAC, 0x86DD, ipv6(V6_A, V6_B, 0, hop + na)),
        "mac_only": u8(0) + u8(0) + tcp4_frame(20),
    }


def segment_seeds():
    big4 = eth(PEER_MAC, GUEST_MAC, 0x0800, ipv4(IP_A, IP_B, 6, tcp(bytes(i % 256 for i in range(4000)))))
    big6 = eth(PEER_MAC, GUEST_MAC, 0x86DD, ipv6(V6_A, V6_B, 17, udp(bytes(3000))))
    vlan4 = eth(PEER_MAC, GUEST_MAC, 0x0800, ipv4(IP_A, IP_B, 6, tcp(bytes(3000))), tags=[(0x8100, 9)])
    return {
        "tso4": offload(1, 1, 54, 1448, 34, 16) + u16(1514) + big4,
        "uso6": offload(1, 5, 62, 1000, 54, 6) + u16(1514) + big6,
        "tso4_vlan": offload(1, 1, 58, 1000, 38, 16) + u16(1518) + vlan4,
        "tso4_ecn": offload(1, 0x81, 54, 536, 34, 16) + u16(9014) + big4,
        "csum": offload(1, 0, 0, 0, 34, 16) + u16(1514) + tcp4_frame(100),
    }


def vxlan_seeds():
    local, remote = [192, 0, 2, 1], [192, 0, 2, 2]
    inner = tcp4_frame(40)
    outer_udp = struct.pack(">HHHH", 49153, 4789, 16 + len(inner), 0) + bytes([8, 0, 0, 0, 0, 0, 100, 0]) + inner
    outer = eth(GUEST_MAC, PEER_MAC, 0x0800, ipv4(remote, local, 17, outer_udp))
    head = bytes(local[::-1]) + u8(1) + bytes(remote[::-1]) + u8(1) + u32(100)
    return {
        "decap": head + u8(0) + u8(0) + u32(0) + u16(0) + outer,
        "roundtrip": head + u8(1) + u8(0) + u32(100) + u16(7) + inner,
    }


def uplink_seeds():
    local, remote = [192, 0, 2, 1], [192, 0, 2, 2]
    inner = eth(bytes([2, 0, 0, 0, 0, 1]), PEER_MAC, 0x0800, ipv4(IP_B, IP_A, 17, udp(b"z" * 30)))
    outer_udp = struct.pack(">HHHH", 49153, 4789, 16 + len(inner), 0) + bytes([8, 0, 0, 0, 0, 0, 1, 0]) + inner
    vx = eth(bytes([2, 0, 0, 0, 0, 0xAA]), PEER_MAC, 0x0800, ipv4(remote, local, 17, outer_udp))
    bcast = eth(b"\xff" * 6, PEER_MAC, 0x0806, arp(PEER_MAC, IP_B, IP_A))
    guest = eth(PEER_MAC, bytes([2, 0, 0, 0, 0, 1]), 0x0800, ipv4(IP_A, IP_B, 17, udp(b"q" * 10)))

    def rx(pick, length):
        return u8(1) + u8(pick) + u16(0) + u16(length)

    flat = u8(0) + u8(0) + u8(len(inner)) + inner + u8(0) + u8(len(bcast)) + bcast + rx(0, len(inner)) + rx(1, len(bcast)) + rx(1, 60)
    flat += u8(3) + u8(0) + u8(len(guest)) + guest + u8(2) + u8(63) + u8(4) + rx(0, 5000)
    over = u8(1) + u8(0) + u8(len(vx)) + vx + rx(0, len(vx)) + u8(2) + u8(63) + u8(4)
    return {"flat": flat, "overlay": over}


def pony_packet(op=None, seq=0, payload=b"", dst_conn=0, src_conn=5, total_len=0,
                op_id=0, offset=0, region=0, addr=0, aux=0, sack=None):
    """One packet of fuzz_targets/pony_rx.rs: peer 0, flow epoch 1, the
    destination epoch left 0 (unknown yet); DATA with `op`, or an ACK."""
    b = u8(0) + (u8(2) if op is None else u8(1)) + u8(1) + u8(1) + u16(seq) + u64(1000) + u32(0)
    if op is None:
        return b + b"".join(u64(w) for w in (sack or [0, 0, 0, 0]))
    return (b + u8(op) + u8(len(payload)) + payload + u8(0) + u8(0) + u8(dst_conn)
            + u8(src_conn) + u32(total_len) + u8(op_id) + u32(offset) + u8(region)
            + u64(addr) + u64(aux))


def pony_seeds():
    connect = pony_packet(op=1, aux=7)
    return {
        "connect_message": connect + pony_packet(op=5, seq=1, payload=b"0123456789", dst_conn=1,
                                                 total_len=20, op_id=1)
        + pony_packet(op=5, seq=2, payload=b"abcdefghij", dst_conn=1, total_len=20, op_id=1,
                      offset=10) + pony_packet(seq=0, sack=[1, 0, 0, 0]),
        "one_sided": connect + pony_packet(op=8, seq=1, dst_conn=1, total_len=64, op_id=2,
                                           region=1, addr=128)
        + pony_packet(op=10, seq=2, dst_conn=1, total_len=64, op_id=3, region=2, aux=1)
        + pony_packet(op=6, seq=3, payload=bytes(range(16)), dst_conn=1, total_len=16, op_id=4,
                      region=1, addr=256),
        "refused_and_raw": pony_packet(op=1, aux=8) + u8(1) + u8(0) + u8(5) + b"PX\x01",
    }


def main():
    out = sys.argv[1]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    all_features = 0x1_FFFF_FFFF_FFFF & ~(1 << 34)
    seeds = {
        "vnic_split": {
            "all": split_seed(all_features, indirect=True),
            "no_mrg": split_seed(all_features & ~F_MRG & ~F_IN_ORDER),
            "in_order_limited": split_seed(F_VERSION_1 | F_IN_ORDER | F_MRG | F_CSUM | F_HOST_TSO4, limited=True),
        },
        "vnic_packed": {
            "all": packed_seed(all_features),
            "no_event_idx": packed_seed(F_VERSION_1 | F_MRG | F_INDIRECT),
        },
        "vhost_user": {
            "qemu_split": vhost_seed(False),
            "qemu_packed": vhost_seed(True),
            "mem_regions": vhost_mem_regions_seed(),
        },
        "rpc": rpc_seeds(),
        "config": config_seeds(root),
        "wire": wire_seeds(),
        "antispoof": antispoof_seeds(),
        "segment": segment_seeds(),
        "vxlan_decap": vxlan_seeds(),
        "uplink_rx": uplink_seeds(),
        "pony_rx": pony_seeds(),
    }
    for target, files in seeds.items():
        d = os.path.join(out, target)
        os.makedirs(d, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
