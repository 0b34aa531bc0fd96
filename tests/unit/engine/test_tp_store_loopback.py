"""The rendezvous store a group's rank 0 hosts listens on loopback only (found in review: torch's TCPStore listened
on every interface whatever host it was given, so any host that reached the machine could read and write the
rendezvous keys); a rank still meets it there, and it closes its socket with itself."""

import gc
import os

from warmserve.engine.parallel import host_store

LISTEN = "0A"  # the TCP state in /proc/net/tcp*


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} writes them) listening on ``port``."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in list(f)[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, hex_port = local.rsplit(":", 1)
                if state == LISTEN and int(hex_port, 16) == port:
                    out.append(addr)
    return out


def test_the_store_listens_on_loopback_only_and_closes_with_itself():
    import datetime

    import torch.distributed as dist

    store = host_store(timeout_s=5)
    port = store.port
    assert _listening(port) == ["0100007F"]  # 127.0.0.1, and not 0.0.0.0 or [::]
    rank = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=5))
    rank.set("k", "v")
    assert store.get("k") == b"v"
    del rank, store
    gc.collect()
    assert _listening(port) == []
