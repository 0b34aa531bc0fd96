"""An IPv6 address without brackets, from a security review: ``tcp://::1:5555`` passed the address check, then
never worked (the socket's ZMQ_IPV6 is set only for the bracketed form): the controller's bind failed with a fix
that did not fit, and a worker connecting to it waited silently. It is refused up front, naming the bracketed form."""

from __future__ import annotations

import pytest

from warmserve.config import ControllerConfig, check_endpoint
from warmserve.errors import InvalidArgumentError


@pytest.mark.parametrize("endpoint, fix, listen", [
    ("tcp://::1:5555", "tcp://[::1]:5555", True),
    ("tcp://::1:5555", "tcp://[::1]:5555", False),
    ("tcp://::1:0", "tcp://[::1]:0", True),
    ("tcp://fe80::1%eth0:7000", "tcp://[fe80::1%eth0]:7000", False),
    ("tcp://2001:db8::5:*", "tcp://[2001:db8::5]:*", True),
])
def test_an_unbracketed_ipv6_address_is_refused_naming_the_bracketed_one(endpoint, fix, listen):
    with pytest.raises(InvalidArgumentError, match="IPv6") as e:
        check_endpoint(endpoint, "--bind", listen=listen)
    assert fix in str(e.value) and "--bind" in str(e.value)
    assert e.value.endpoint == endpoint


def test_the_controller_config_refuses_it_and_bracketed_and_other_hosts_pass():
    with pytest.raises(InvalidArgumentError, match=r"tcp://\[::1\]:5555"):
        ControllerConfig(bind="tcp://::1:5555")
    for ok in ("tcp://[::1]:5555", "tcp://[fe80::1%eth0]:7000", "tcp://127.0.0.1:5555", "tcp://localhost:5555",
               "tcp://*:5555", "ipc:///tmp/a:b", "inproc://x:y"):
        check_endpoint(ok, "--bind", listen=True)
    assert ControllerConfig(bind="tcp://[::1]:0").bind == "tcp://[::1]:0"
