"""Fetching an event's image bytes under limits: inline, ``file://`` under a root, or ``http(s)://``.

Every failure raises `ImageLoadError` with a short reason code. HTTP is where hostile input bites: the
URL comes from the event, so the fetcher resolves the host itself, refuses addresses `netguard` calls
non-public (after DNS and on every redirect, which it follows itself), connects to exactly the address
it checked (a DNS answer cannot change between the check and the connection), sends no credentials,
and caps the bytes and the total time of the whole exchange.
"""

from __future__ import annotations

import errno
import functools
import http.client
import os
import socket
import ssl
import stat
import threading
import time
from pathlib import Path
from typing import BinaryIO
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

from moderation.events import ImageEvent
from moderation.exceptions import ImageLoadError
from moderation.netguard import Resolved, address_problem, host_allowed, normalise_host, resolve
from moderation.settings import ImageSettings

REASON_TOO_LARGE = "too_large"
REASON_NOT_FOUND = "not_found"
REASON_FETCH_FAILED = "fetch_failed"
REASON_NOT_ALLOWED = "not_allowed"  # a scheme, host or URL form the settings do not accept
REASON_BLOCKED_ADDRESS = "blocked_address"  # the host resolves to a non-public address (SSRF guard)
REASON_NOT_AN_IMAGE = "not_an_image"

_READ_CHUNK = 256 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Fixed for every request and every redirect: nothing from the event or a previous response is sent,
# so no cookie or Authorization header can be forwarded anywhere.
_HEADERS = {"User-Agent": "moderation-image-fetcher", "Accept": "image/*", "Connection": "close"}


def fetch_bytes(event: ImageEvent, limits: ImageSettings) -> bytes:
    """The encoded image of `event`, at most `limits.max_bytes` long and never empty."""
    if event.inline_bytes is not None:
        data = event.inline_bytes
    else:
        assert event.image_url is not None  # the event contract guarantees one of the two
        scheme = urlsplit(event.image_url).scheme.lower()
        if scheme == "file":
            data = _read_file(urlsplit(event.image_url).path, limits)
        elif scheme in ("http", "https"):
            data = fetch_http(event.image_url, limits)
        else:  # pragma: no cover - refused by the event contract already
            raise ImageLoadError(REASON_NOT_ALLOWED, f"scheme {scheme!r}")
    if len(data) > limits.max_bytes:
        raise ImageLoadError(REASON_TOO_LARGE, f"{len(data)} bytes is over the limit of {limits.max_bytes}")
    if not data:
        raise ImageLoadError(REASON_NOT_AN_IMAGE, "zero bytes")
    return data


def _read_file(raw_path: str, limits: ImageSettings) -> bytes:
    """The bytes of a regular file under `limits.file_root`, read within `limits.fetch_timeout_s`.

    The event names the path, so the checks come before any filesystem access that could tell whether a
    file outside the root exists (every refusal there is the same ``not_allowed``), and nothing but a
    regular file is ever opened: a FIFO, a pipe under /proc or a device would block a loader thread or
    have side effects on open.
    """
    if limits.file_root is None:
        raise ImageLoadError(REASON_NOT_ALLOWED, "file:// images need images.file_root, which is not set")
    if not limits.allow_file:
        raise ImageLoadError(REASON_NOT_ALLOWED, "file:// images are disabled (images.allow_file)")
    deadline = time.monotonic() + limits.fetch_timeout_s
    path = unquote(raw_path)
    fd = _open_under_root(path, limits.file_root)
    handle = _file_reader(fd)
    try:
        size = os.fstat(fd).st_size
        if size > limits.max_bytes:
            raise ImageLoadError(REASON_TOO_LARGE, f"{size} bytes is over the limit of {limits.max_bytes}")
        return read_capped(handle, limits.max_bytes, deadline)
    except OSError as exc:  # EIO from a failing disk or network filesystem
        raise ImageLoadError(REASON_FETCH_FAILED, f"cannot read {path}: {exc.strerror or exc}") from exc
    finally:
        handle.close()


def _file_reader(fd: int) -> BinaryIO:
    """An unbuffered reader that owns `fd`: each read is one read(2), so the deadline is checked between them."""
    return os.fdopen(fd, "rb", buffering=0)


def _open_under_root(path: str, file_root: Path) -> int:
    """A read-only descriptor of the regular file `path`, which must lie under `file_root`.

    Symbolic links are followed while they stay inside the root (an alias of another image under it is
    fine) and refused when they lead out. The path is resolved and checked first, then opened component
    by component from a descriptor of the root, each with O_NOFOLLOW: a link swapped in between the check
    and the open is refused rather than followed. The file itself is checked to be regular before it is
    opened (O_NONBLOCK as well, so even a FIFO swapped in at the last moment cannot block) and again after.
    """
    if "\x00" in path or not os.path.isabs(path):
        raise ImageLoadError(REASON_NOT_ALLOWED, f"{path!r} is not an absolute path")
    root = os.path.abspath(file_root)
    real_root = os.path.realpath(root)
    lexical = os.path.normpath(path)
    # The URL itself must name a path under the root (as configured or as resolved), not merely land
    # there through a link elsewhere; this check touches no file, so existence outside cannot leak.
    if not (_is_under(lexical, root) or _is_under(lexical, real_root)):
        raise ImageLoadError(REASON_NOT_ALLOWED, f"{path} is outside images.file_root {root}")
    resolved = os.path.realpath(lexical)
    if not _is_under(resolved, real_root):
        raise ImageLoadError(REASON_NOT_ALLOWED, f"{path} is outside images.file_root {root} (through a link)")
    parts = [part for part in os.path.relpath(resolved, real_root).split(os.sep) if part not in ("", ".")]
    if not parts:
        raise ImageLoadError(REASON_FETCH_FAILED, f"cannot read {path}: it is the images.file_root directory")
    try:
        directory = os.open(real_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ImageLoadError(REASON_FETCH_FAILED, f"images.file_root {root} cannot be opened: {exc.strerror}") from exc
    try:
        for part in parts[:-1]:
            child = _open_directory(part, directory, path)
            os.close(directory)
            directory = child
        return _open_regular(parts[-1], directory, path)
    except ImageLoadError:
        raise
    except FileNotFoundError as exc:
        raise ImageLoadError(REASON_NOT_FOUND, f"no such file: {path}") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link where the resolved path had none: a loop, or swapped in
            raise ImageLoadError(REASON_NOT_ALLOWED, f"{path}: a symbolic link that does not resolve") from exc
        raise ImageLoadError(REASON_FETCH_FAILED, f"cannot read {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(directory)


def _open_directory(name: str, directory: int, path: str) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    except OSError as exc:
        # A link is refused with ELOOP or ENOTDIR depending on the flags' precedence: tell them apart.
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(name, directory):
            raise ImageLoadError(REASON_NOT_ALLOWED, f"{path}: a symbolic link that does not resolve") from exc
        raise


def _open_regular(name: str, directory: int, path: str) -> int:
    before = os.stat(name, dir_fd=directory, follow_symlinks=False)
    if stat.S_ISLNK(before.st_mode):
        raise ImageLoadError(REASON_NOT_ALLOWED, f"{path}: a symbolic link that does not resolve")
    if not stat.S_ISREG(before.st_mode):
        raise ImageLoadError(REASON_FETCH_FAILED, f"cannot read {path}: not a regular file")
    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    after = os.fstat(fd)
    if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise ImageLoadError(REASON_FETCH_FAILED, f"cannot read {path}: not a regular file (replaced while opened)")
    return fd


def _is_link(name: str, directory: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def fetch_http(url: str, limits: ImageSettings) -> bytes:
    """GET an http(s) URL under the SSRF guard, following at most `limits.max_redirects` redirects.

    The whole exchange - every DNS answer checked, every connection, headers and body of every hop -
    ends by `limits.fetch_timeout_s`: a watchdog closes the socket at the deadline, so a server that
    trickles headers or body a byte at a time cannot hold a loader thread for longer (DNS lookups
    themselves are bounded by the system resolver's timeout instead).
    """
    if not limits.allow_http:
        raise ImageLoadError(REASON_NOT_ALLOWED, "http(s) images are disabled (images.allow_http)")
    deadline = time.monotonic() + limits.fetch_timeout_s
    for _ in range(limits.max_redirects + 1):
        target = _checked_target(url, limits)
        outcome = _get(target, url, limits, deadline)
        if isinstance(outcome, bytes):
            return outcome
        next_url = urljoin(url, outcome)
        if target.scheme == "https" and urlsplit(next_url).scheme.lower() == "http":
            raise ImageLoadError(REASON_NOT_ALLOWED, f"{url} redirects from https to plain http: {next_url}")
        url = next_url
    raise ImageLoadError(REASON_FETCH_FAILED, f"more than {limits.max_redirects} redirects, the last to {url}")


class _Target:
    """A URL that passed the checks, with the addresses its host resolved to (all of them checked)."""

    def __init__(self, parts: SplitResult, host: str, port: int, addresses: list[Resolved]) -> None:
        self.scheme = parts.scheme.lower()
        self.host = host
        self.port = port
        self.addresses = addresses
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _checked_target(url: str, limits: ImageSettings) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        host = normalise_host(parts.hostname or "")
    except (ValueError, UnicodeError) as exc:
        raise ImageLoadError(REASON_NOT_ALLOWED, f"malformed URL {url!r}: {exc}") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise ImageLoadError(REASON_NOT_ALLOWED, f"{url}: only http(s) URLs may be fetched, or redirected to")
    if "@" in parts.netloc:
        raise ImageLoadError(REASON_NOT_ALLOWED, f"{parts.hostname}: URLs with credentials are never fetched")
    if not host:
        raise ImageLoadError(REASON_NOT_ALLOWED, f"{url}: no host")
    if not host_allowed(host, limits.allowed_url_hosts):
        raise ImageLoadError(REASON_NOT_ALLOWED, f"host {host!r} is not in images.allowed_url_hosts")
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise ImageLoadError(REASON_FETCH_FAILED, f"cannot resolve {host!r}: {exc}") from exc
    if not addresses:
        raise ImageLoadError(REASON_FETCH_FAILED, f"{host!r} resolves to no TCP address")
    for resolved in addresses:  # every one: a name answering with a public and a private address is refused
        problem = address_problem(resolved.address, limits.allow_private_networks)
        if problem is not None:
            raise ImageLoadError(REASON_BLOCKED_ADDRESS, f"{host} resolves to {resolved.address}, {problem}")
    return _Target(parts, host, port, addresses)


def _get(target: _Target, url: str, limits: ImageSettings, deadline: float) -> bytes | str:
    """One request: the body of a 2xx answer, or the Location of a redirect."""
    connection = _PinnedConnection(target, deadline)
    watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), connection.abort)
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.connect()
        connection.request("GET", target.path, headers=_HEADERS)
        response = connection.getresponse()
        if response.status in _REDIRECTS:
            location = response.getheader("Location")
            if not location:
                raise ImageLoadError(REASON_FETCH_FAILED, f"HTTP {response.status} without a Location from {url}")
            return location
        if not 200 <= response.status < 300:
            reason = REASON_NOT_FOUND if response.status in (404, 410) else REASON_FETCH_FAILED
            raise ImageLoadError(reason, f"HTTP {response.status} from {url}")
        length = response.getheader("Content-Length")
        if length and length.isdigit() and int(length) > limits.max_bytes:
            raise ImageLoadError(REASON_TOO_LARGE, f"Content-Length {length} is over {limits.max_bytes}")
        body = read_capped(response, limits.max_bytes, deadline)
        if connection.aborted:  # the watchdog cut a body that had no length: it would look complete
            raise ImageLoadError(REASON_FETCH_FAILED, f"{url}: not received within the fetch timeout")
        return body
    except ImageLoadError:
        raise
    except (http.client.HTTPException, OSError, ValueError) as exc:
        detail = "not received within the fetch timeout" if connection.aborted else f"{type(exc).__name__}: {exc}"
        raise ImageLoadError(REASON_FETCH_FAILED, f"{url}: {detail}") from exc
    finally:
        watchdog.cancel()
        connection.close()


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to the checked addresses only; the Host header and the TLS certificate
    check still use the host name from the URL."""

    def __init__(self, target: _Target, deadline: float) -> None:
        super().__init__(target.host, target.port, timeout=max(deadline - time.monotonic(), 0.001))
        self._target = target
        self._deadline = deadline
        self._raw: socket.socket | None = None
        self._lock = threading.Lock()
        self.aborted = False

    def connect(self) -> None:
        sock = self._connect_any()
        self.sock = sock  # from here on close() releases it, whatever fails next
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._target.scheme == "https":
            # The handshake runs after _raw is set, so the watchdog can cut a server stalling it too.
            sock = _tls_context().wrap_socket(sock, server_hostname=self._target.host, do_handshake_on_connect=False)
            self.sock = sock
        with self._lock:
            self._raw = sock
            aborted = self.aborted
        if aborted:  # the watchdog fired while connecting
            raise TimeoutError("fetch timeout reached while connecting")
        if isinstance(sock, ssl.SSLSocket):
            sock.do_handshake()

    def _connect_any(self) -> socket.socket:
        """A TCP connection to the first checked address that answers (never to the name itself)."""
        errors = []
        for resolved in self._target.addresses:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("fetch timeout reached before a connection was made")
            try:
                return socket.create_connection(resolved.sockaddr, timeout=remaining)
            except OSError as exc:
                errors.append(f"{resolved.address}: {exc}")
        raise OSError("; ".join(errors))

    def abort(self) -> None:
        """Called by the watchdog at the deadline: any blocked read or write fails at once."""
        with self._lock:
            self.aborted = True
            if self._raw is not None:
                try:
                    # The plain socket's shutdown, also on a TLS socket: it unblocks a reader in another
                    # thread without tearing down the TLS object under it.
                    socket.socket.shutdown(self._raw, socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The system's trust store, loaded once: certificates and host names are verified."""
    return ssl.create_default_context()


def read_capped(handle: BinaryIO, max_bytes: int, deadline: float | None = None) -> bytes:
    """Read at most max_bytes + 1 so an endless body cannot exhaust memory, and stop at `deadline`."""
    # read1() returns what has arrived instead of waiting for a full chunk, so the deadline is checked
    # between network reads even when a server trickles bytes.
    read = getattr(handle, "read1", handle.read)
    chunks: list[bytes] = []
    total = 0
    while total <= max_bytes:
        if deadline is not None and time.monotonic() > deadline:
            raise ImageLoadError(REASON_FETCH_FAILED, f"not received within the fetch timeout ({total} bytes so far)")
        chunk = read(min(_READ_CHUNK, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > max_bytes:
        raise ImageLoadError(REASON_TOO_LARGE, f"more than {max_bytes} bytes")
    return b"".join(chunks)
