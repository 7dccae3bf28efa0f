#!/usr/bin/python3
"""A mixed Ethernet capture built with scapy, independent of labelflow-gen-capture.

Frames of FLOWS flows (about 30 % IPv6; TCP, UDP, ICMP/ICMPv6, ESP with its own SPI per
flow, IPv4 and IPv6 fragments of large UDP datagrams), sizes from 60 to 1514 bytes, are
built once with scapy and then written PACKETS times in a seeded random order with
timestamps spread over SECONDS, as a classic microsecond pcap.

    /usr/bin/python3 bench/scapy-capture.py OUT.pcap [PACKETS] [FLOWS] [SECONDS]
    editcap -F pcapng OUT.pcap OUT.pcapng

Debian's scapy lives in /usr/bin/python3 (apt-get install python3-scapy).
"""
import random
import struct
import sys

from scapy.all import Ether, IP, IPv6, TCP, UDP, ICMP, ICMPv6EchoRequest, Raw, fragment
from scapy.layers.inet6 import IPv6ExtHdrFragment, fragment6
from scapy.layers.ipsec import ESP

out = sys.argv[1]
packets = int(sys.argv[2]) if len(sys.argv) > 2 else 2_000_000
flows = int(sys.argv[3]) if len(sys.argv) > 3 else 6000
seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
rng = random.Random(20261202)
SIZES = [60, 64, 90, 128, 200, 370, 576, 800, 1000, 1280, 1400, 1500]


def addr(v6):
    if v6:
        return "2001:db8:%x::%x" % (rng.randrange(1, 0xffff), rng.randrange(1, 0xffff))
    return "10.%d.%d.%d" % (rng.randrange(256), rng.randrange(256), rng.randrange(1, 255))


def frames_of_flow():
    """The frames of one flow (one frame, or the fragments of one datagram)."""
    v6 = rng.random() < 0.3
    src, dst = addr(v6), addr(v6)
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst, id=rng.randrange(65536))
    hdr = 40 if v6 else 20
    size = rng.choice(SIZES)
    kind = rng.choices(["tcp", "udp", "icmp", "esp", "frag"], [40, 25, 5, 15, 15])[0]
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    if kind == "tcp":
        l4 = TCP(sport=rng.randrange(1024, 65535), dport=rng.choice([22, 80, 443, 8443]), flags="A")
        pad = max(0, size - hdr - 20)
    elif kind == "udp":
        l4 = UDP(sport=rng.randrange(1024, 65535), dport=rng.choice([53, 123, 443, 4789]))
        pad = max(0, size - hdr - 8)
    elif kind == "icmp":
        l4 = ICMPv6EchoRequest(id=rng.randrange(65536)) if v6 else ICMP(id=rng.randrange(65536))
        pad = max(0, size - hdr - 8)
    elif kind == "esp":
        l4 = ESP(spi=rng.randrange(0x100, 0xFFFFFFFF), seq=1)
        pad = max(0, size - hdr - 8)
    else:
        # A UDP datagram larger than the path MTU, sent as fragments.
        l4 = UDP(sport=rng.randrange(1024, 65535), dport=5000)
        body = Raw(bytes(rng.randrange(1400, 4000)))
        if v6:
            return [bytes(eth / f) for f in fragment6(ip / IPv6ExtHdrFragment() / l4 / body, 1280)]
        return [bytes(eth / f) for f in fragment(ip / l4 / body, fragsize=1000)]
    return [bytes(eth / ip / l4 / Raw(bytes(pad)))]


templates = [frames_of_flow() for _ in range(flows)]
step = seconds / packets
with open(out, "wb") as f:
    f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    t = 1_700_000_000.0
    written = 0
    while written < packets:
        for frame in templates[rng.randrange(flows)]:
            sec = int(t)
            usec = int((t - sec) * 1e6)
            f.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
            f.write(frame)
            written += 1
            t += step
print("%s: %d packets, %d flows" % (out, written, flows))
