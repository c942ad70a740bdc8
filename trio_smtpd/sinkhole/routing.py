"""Every client address to one worker: a classic BPF program for a SO_REUSEPORT group.

With ``--workers N`` each worker keeps its own counters (connections per address, the
connection rate, AUTH failures, the TLS-fallback table). If the kernel spread one
address's connections over the workers, as its default hash of the 4-tuple does, every
per-address limit would be N times looser. So the supervisor attaches this program to
each plain and implicit-TLS listening group: it hashes the client's source address (not
its port), and the kernel hands the connection to the listening socket of that index.
One address always reaches one worker, whose counters are then the whole truth; many
addresses spread evenly (a multiplicative hash, mixed as in "xorshift").

The index is a position in the group, which is the order the sockets started listening
in. The supervisor creates and keeps every worker's socket (workers inherit theirs), so
the group never changes while the server runs: a worker that dies and is restarted gets
the same socket back, with the connections that queued meanwhile.

PROXY-protocol listeners are left to the kernel's default: there the source address is
the balancer's, shared by every client behind it (see docs/operations.md).

Linux only (SO_ATTACH_REUSEPORT_CBPF, 4.5+); the program runs on the SYN, costs no
system call per connection, and the ``BPF_ABS`` loads at ``SKF_NET_OFF`` read the IP
header whatever the transport header in front of the data.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

__all__ = ["AVAILABLE", "route_by_source"]

AVAILABLE = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
SO_ATTACH_REUSEPORT_CBPF = 51
_SKF_NET_OFF = -0x100000
# Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
_LD_W_ABS = 0x00 | 0x00 | 0x20
_TAX, _RET_A = 0x07 | 0x00, 0x06 | 0x10
_ALU_K, _ALU_X = 0x04 | 0x00, 0x04 | 0x08
_MUL, _RSH, _MOD, _XOR = 0x20, 0x70, 0x90, 0xA0
_MIX = 0x045D9F3B


def _insn(code: int, k: int = 0) -> bytes:
    return struct.pack("HBBI", code, 0, 0, k & 0xFFFFFFFF)


def program(family: int, count: int) -> list[bytes]:
    """The instructions: A = the source address (IPv6: its four words XORed), mixed,
    modulo ``count``; the kernel takes A as the index of the socket."""
    if family == socket.AF_INET:
        load = [_insn(_LD_W_ABS, _SKF_NET_OFF + 12)]  # IPv4 header: source at 12
    else:
        load = [_insn(_LD_W_ABS, _SKF_NET_OFF + 8)]  # IPv6 header: source at 8..24
        for offset in (12, 16, 20):
            load += [_insn(_TAX), _insn(_LD_W_ABS, _SKF_NET_OFF + offset),
                     _insn(_ALU_X | _XOR)]
    mix = [_insn(_TAX), _insn(_ALU_K | _RSH, 16), _insn(_ALU_X | _XOR),
           _insn(_ALU_K | _MUL, _MIX),
           _insn(_TAX), _insn(_ALU_K | _RSH, 16), _insn(_ALU_X | _XOR)]
    return [*load, *mix, _insn(_ALU_K | _MOD, count), _insn(_RET_A)]


def route_by_source(sock: socket.socket, count: int) -> None:
    """Make ``sock``'s SO_REUSEPORT group hand each client address to one of its first
    ``count`` sockets (raises OSError where the system cannot)."""
    code = b"".join(program(sock.family, count))
    buffer = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
