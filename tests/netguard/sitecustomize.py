"""Block network access in every Python process the tests start (kernels included).

Loaded automatically because ``tests/conftest.py`` puts this folder first on ``PYTHONPATH``.
Loopback and Unix sockets stay allowed (Jupyter kernels talk over 127.0.0.1); anything else
raises, so code that would download at run time fails the tests instead of passing here by luck.
"""

import socket

_ALLOWED_HOSTS = {"127.0.0.1", "::1", "localhost", "0.0.0.0", ""}
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


class NetworkBlocked(OSError):
    pass


def _host(address):
    if isinstance(address, (tuple, list)) and address:
        return str(address[0])
    return ""  # AF_UNIX path


def _guard(address):
    host = _host(address)
    if host not in _ALLOWED_HOSTS and not host.startswith("127."):
        raise NetworkBlocked(f"network access blocked during tests: {address!r}")


def _connect(self, address):
    _guard(address)
    return _real_connect(self, address)


def _connect_ex(self, address):
    _guard(address)
    return _real_connect_ex(self, address)


def _getaddrinfo(host, *args, **kwargs):
    _guard((host,) if host is not None else ("",))
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _connect
socket.socket.connect_ex = _connect_ex
socket.getaddrinfo = _getaddrinfo
