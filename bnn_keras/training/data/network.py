"""A connectivity probe: can the data set download host be reached at all, answered in seconds."""

import os
import socket
import threading
import urllib.parse
from typing import List, Optional, Tuple

# TFDS first looks for a prepared copy on Google Cloud Storage, then downloads from the data
# set's own hosts, retrying each file for minutes when offline. One TCP connection tells in
# seconds whether the network is there at all. BNN_NETWORK_PROBE=HOST:PORT probes another
# host (a mirror), BNN_NETWORK_PROBE=off skips the probe.
NETWORK_PROBE_ENV = "BNN_NETWORK_PROBE"
_DEFAULT_PROBE = ("storage.googleapis.com", 443)
_PROBE_TIMEOUT_S = 3.0


def _probe_address() -> Optional[Tuple[str, int]]:
    """Where the connectivity probe connects: BNN_NETWORK_PROBE, the HTTPS proxy, or GCS."""
    setting = os.environ.get(NETWORK_PROBE_ENV, "").strip()
    if setting.lower() in ("off", "0", "no", "none"):
        return None
    if setting:
        host, _, port = setting.rpartition(":") if ":" in setting else (setting, "", "443")
        return host.strip("[]"), int(port)
    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if os.environ.get(k)), None)
    if proxy:  # downloads go through the proxy; a direct connection may well be blocked
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parsed.hostname:
            return parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    return _DEFAULT_PROBE


def network_unreachable_reason(timeout: float = _PROBE_TIMEOUT_S) -> Optional[str]:
    """Why the download host cannot be reached, or None when a TCP connection to it opens.

    One TCP connect, no HTTP request. Name resolution has no timeout of its own in Python, so
    the attempt runs in a daemon thread that is abandoned after `timeout` (+1 s).

    Args:
        timeout: Seconds for the connection.

    Returns:
        None when online (or the probe is switched off with BNN_NETWORK_PROBE=off), else a
        short reason such as "cannot reach storage.googleapis.com:443: Name or service not
        known".
    """
    address = _probe_address()
    if address is None:
        return None
    outcome: List[Optional[str]] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc.strerror or str(exc) or type(exc).__name__)

    thread = threading.Thread(target=connect, name="bnn-network-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if outcome and outcome[0] is None:
        return None
    why = outcome[0] if outcome else f"no answer within {timeout:.0f} s"
    return f"cannot reach {address[0]}:{address[1]}: {why}"
