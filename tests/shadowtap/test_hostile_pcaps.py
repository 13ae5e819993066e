"""The hostile captures' frames (packed with struct for speed) are what scapy reads and would have
built: valid IPv4 and TCP checksums, the payloads in sequence."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP
from scapy.utils import rdpcap

from tests.support.hostile_pcaps import SECRET_REQUEST, crlf, secrets


def test_frames_are_valid_for_scapy(tmp_path):
    for build in (secrets, crlf):
        pkts = rdpcap(build(str(tmp_path / f"{build.__name__}.pcap")))
        assert len(pkts) >= 6
        for p in pkts:
            ip, tcp = p[IP], p[TCP]
            sent_ip, sent_tcp = ip.chksum, tcp.chksum
            del ip.chksum, tcp.chksum
            rebuilt = IP(bytes(ip))
            assert rebuilt.chksum == sent_ip and rebuilt[TCP].chksum == sent_tcp
    pkts = rdpcap(str(tmp_path / "secrets.pcap"))
    first = next(p for p in pkts if p[TCP].payload and p[TCP].dport == 80)
    assert bytes(first[TCP].payload) == SECRET_REQUEST
    assert [p[TCP].flags for p in pkts[:2]] == ["S", "SA"]
