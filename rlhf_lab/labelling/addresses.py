"""Where the labelling app listens and where labellers reach it, checked before it starts: the host is
an address of this machine, the port is free, and the public address is a web origin. The same checks
serve ``feedback=human`` (keys ``feedback.host``, ``feedback.port``, ``feedback.public_url``) and
``label serve`` (``--host``, ``--port``, ``--public-url``); each refusal names the key the user set."""

from __future__ import annotations

import errno
import socket
from urllib.parse import urlsplit

from rlhf_lab.errors import RlhfLabError

DEFAULT_PORTS = {"http": 80, "https": 443}


def check_address(host: str, port: int, host_key: str, port_key: str) -> None:
    """Refuse a host that is not an address of this machine (blamed on ``host_key``), or a port that is
    out of range or that another program serves on (blamed on ``port_key``). Port 0 (any free one)
    still checks the host."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise RlhfLabError(f"{port_key}={port}: a port is a number from 0 to 65535 (0: any free one)")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise RlhfLabError(f"{host_key}={host}: not an address ({error}); give an IP address or host name of this machine, "
                           "e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every network)") from None
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the app binds it: TIME_WAIT is no conflict
    try:
        probe.bind((host, port))
    except OSError as error:
        if error.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(error, socket.gaierror):
            raise RlhfLabError(f"{host_key}={host}: not an address of this machine ({error.strerror or error}); "
                               "give one of its own, e.g. 127.0.0.1 or 0.0.0.0") from None
        raise RlhfLabError(f"{port_key}={port}: cannot serve the labelling app on {host}:{port} ({error.strerror or error}); "
                           f"choose another port, or {port_key}=0 for any free one") from None
    finally:
        probe.close()


def public_origin(url: str, key: str) -> str:
    """The web origin (``scheme://host[:port]``, as a browser sends it in ``Origin``) of the address
    labellers open; anything but an http(s) URL with a host is refused, naming ``key``. A path is
    allowed (a proxy may serve the app under one) and is not part of the origin."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise RlhfLabError(f"{key}={url}: not a URL ({error})") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise RlhfLabError(f"{key}={url}: give the address labellers open, e.g. https://label.example.org or http://10.0.0.5:8765")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, DEFAULT_PORTS[parts.scheme]) else "")
