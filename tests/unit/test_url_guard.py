"""moderation/fetch.py and netguard.py: the SSRF guard on http(s) image URLs.

The only servers are `http.server`s on loopback addresses, and a safety net refuses any connection
off the loopback range: a guard that failed open would fail these tests, never send a packet out.
Where a test needs a "public" first hop, 127.0.0.1 stands in for one (`public_stand_in`): every other
address is judged by the real rule, which is what the tests are about.
"""

from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image
from pydantic import ValidationError

import moderation.fetch as fetch_module
from consumers.producer import image_event
from moderation.events import ImageEvent
from moderation.exceptions import ImageLoadError
from moderation.fetch import fetch_http
from moderation.images import (
    REASON_BLOCKED_ADDRESS,
    REASON_FETCH_FAILED,
    REASON_NOT_ALLOWED,
    REASON_TOO_LARGE,
    load_image,
)
from moderation.netguard import address_problem, host_allowed, normalise_host
from moderation.settings import ImageSettings

LOCAL = ImageSettings(allow_private_networks=True)  # the loopback servers are private addresses
STRICT = ImageSettings()  # the default: public addresses only


def url_event(url: str) -> ImageEvent:
    return ImageEvent.model_validate(image_event(content_id="c", source="test", image_url=url))


def png() -> bytes:
    buffer = BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(buffer, "PNG")
    return buffer.getvalue()


# --- the loopback servers ---------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def _redirect(self, location: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.requests.append((self.path, dict(self.headers.items())))
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        if url.path == "/image.png":
            body = png()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif url.path == "/redirect":
            self._redirect(query["to"])
        elif url.path.startswith("/chain/"):
            left = int(url.path.rsplit("/", 1)[1])
            self._redirect(f"/chain/{left - 1}" if left > 1 else "/image.png")
        elif url.path == "/login":
            # A server that hands out a session cookie and credentials-bearing redirects.
            self._redirect("/image.png", {"Set-Cookie": "session=secret; Path=/", "WWW-Authenticate": "Basic"})
        elif url.path == "/no-location":
            self.send_response(302)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/slow-headers":
            # Each header byte arrives well within any socket timeout; the headers never end.
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for _ in range(200):
                    if self.server.release.wait(0.05):
                        break
                    self.wfile.write(b"X")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up at its deadline, as it should
        elif url.path == "/endless":
            # Chunked and never ending: only the byte cap stops it.
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\0" * 8192
            try:
                while not self.server.release.is_set():
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading at its limit, as it should
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    requests: list[tuple[str, dict[str, str]]]
    release: threading.Event

    def url(self, path: str) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{path}"

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def _serve(host: str) -> Iterator[_Server]:
    server = _Server((host, 0), _Handler)
    server.requests = []
    server.release = threading.Event()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    yield from _serve("127.0.0.1")


@pytest.fixture(scope="module")
def second() -> Iterator[_Server]:
    """Another loopback server, on 127.0.0.2: what a redirect must not reach."""
    yield from _serve("127.0.0.2")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail the test on any connection attempt outside 127.0.0.0/8 and ::1, before a packet leaves."""
    attempts: list[str] = []
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        attempts.append(str(address[0]))
        if isinstance(address, tuple) and not ip_address(str(address[0]).split("%")[0]).is_loopback:
            raise AssertionError(f"the fetcher tried to connect to {address[0]}")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


@pytest.fixture
def public_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """Judge 127.0.0.1 as if it were a public address; everything else by the real rule."""

    def problem(address: Any, allow_private: bool = False) -> str | None:
        if address == IPv4Address("127.0.0.1"):
            return None
        return address_problem(address, allow_private)

    monkeypatch.setattr(fetch_module, "address_problem", problem)


def refused(url: str, limits: ImageSettings) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        fetch_http(url, limits)
    return info.value


# --- the address rule, unit by unit -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.0.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "not a public address"),  # carrier-grade NAT, shared address space
        ("192.0.2.1", "private"),  # documentation
        ("240.0.0.1", "private"),  # reserved (class E)
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "metadata"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:c0a8:0101::1", "private"),  # 6to4 of 192.168.1.1
    ],
)
def test_non_public_addresses_are_refused(address: str, why: str) -> None:
    problem = address_problem(ip_address(address))
    assert problem is not None and why in problem


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "151.101.1.69", "2606:4700:4700::1111", "2a00:1450::1"])
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ip_address(address)) is None


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),
        ("10.0.0.1", True),
        ("fe80::1", True),
        ("169.254.169.254", False),  # metadata: never, whatever the setting
        ("fd00:ec2::254", False),
        ("::ffff:169.254.169.254", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
    ],
)
def test_allow_private_opens_private_ranges_but_never_metadata(address: str, allowed: bool) -> None:
    assert (address_problem(ip_address(address), allow_private=True) is None) is allowed


@pytest.mark.parametrize(
    ("host", "patterns", "allowed"),
    [
        ("anything.example", [], True),
        ("cdn.example.com", ["cdn.example.com"], True),
        ("img.cdn.example.com", ["*.cdn.example.com"], True),
        ("a.b.cdn.example.com", ["*.cdn.example.com"], True),
        ("cdn.example.com", ["*.cdn.example.com"], False),  # the bare domain is listed separately
        ("evilcdn.example.com", ["*.cdn.example.com"], False),
        ("cdn.example.com.evil.net", ["cdn.example.com", "*.cdn.example.com"], False),
        ("other.example.com", ["cdn.example.com"], False),
    ],
)
def test_host_allow_list_patterns(host: str, patterns: list[str], allowed: bool) -> None:
    assert host_allowed(host, patterns) is allowed


def test_hosts_are_normalised_like_the_allow_list() -> None:
    assert normalise_host("CDN.Example.COM.") == "cdn.example.com"
    assert normalise_host("bücher.example") == "xn--bcher-kva.example"
    assert ImageSettings(allowed_url_hosts=["*.CDN.Example.com.", "Bücher.example"]).allowed_url_hosts == (
        "*.cdn.example.com",
        "xn--bcher-kva.example",
    )


@pytest.mark.parametrize("pattern", ["http://cdn.example.com", "cdn.example.com:443", "*", "*.", "a*.example.com", ""])
def test_malformed_host_patterns_are_refused_at_start_up(pattern: str) -> None:
    with pytest.raises(ValidationError):
        ImageSettings(allowed_url_hosts=[pattern])


def test_guard_defaults() -> None:
    assert (STRICT.allow_private_networks, STRICT.allowed_url_hosts, STRICT.max_redirects) == (False, (), 5)


# --- refused before any connection ------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",  # a name: resolved by the real resolver, then judged by its address
        "[::1]",
        "2130706433",  # 127.0.0.1 as one decimal number
        "0x7f.1",  # hex and a short form
        "0177.0.0.1",  # octal
        "127.1",
        "[::ffff:127.0.0.1]",
    ],
)
def test_loopback_in_any_spelling_is_blocked(server: _Server, loopback_only: list[str], host: str) -> None:
    before = len(server.requests)
    error = refused(f"http://{host}:{server.port}/image.png", STRICT)
    assert error.reason == REASON_BLOCKED_ADDRESS
    assert "loopback" in error.detail
    assert loopback_only == [] and len(server.requests) == before  # no connection was even attempted


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "[fd00:ec2::254]",
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "[fe80::1]",
        "0.0.0.0",
        "[fc00::1]",
    ],
)
def test_metadata_and_private_hosts_are_blocked(loopback_only: list[str], host: str) -> None:
    error = refused(f"http://{host}/latest/meta-data/", STRICT)
    assert error.reason == REASON_BLOCKED_ADDRESS
    assert loopback_only == []


@pytest.mark.parametrize("host", ["169.254.169.254", "[fd00:ec2::254]", "[::ffff:169.254.169.254]"])
def test_metadata_is_blocked_even_with_private_networks_allowed(loopback_only: list[str], host: str) -> None:
    error = refused(f"http://{host}/latest/meta-data/iam/security-credentials/", LOCAL)
    assert error.reason == REASON_BLOCKED_ADDRESS
    assert "metadata" in error.detail
    assert loopback_only == []


def test_the_same_server_loads_once_private_networks_are_allowed(server: _Server) -> None:
    loaded = load_image(url_event(server.url("/image.png")), LOCAL)
    assert loaded.image is not None and loaded.image.size == (8, 8)


def test_a_host_off_the_allow_list_is_not_allowed(server: _Server, loopback_only: list[str]) -> None:
    limits = ImageSettings(allow_private_networks=True, allowed_url_hosts=["images.example.com"])
    error = refused(server.url("/image.png"), limits)
    assert error.reason == REASON_NOT_ALLOWED
    assert "allowed_url_hosts" in error.detail
    assert loopback_only == []
    listed = ImageSettings(allow_private_networks=True, allowed_url_hosts=["images.example.com", "127.0.0.1"])
    assert fetch_http(server.url("/image.png"), listed) == png()


@pytest.mark.parametrize("userinfo", ["user:password@", "user@", ":token@"])
def test_urls_with_credentials_are_refused(server: _Server, loopback_only: list[str], userinfo: str) -> None:
    error = refused(f"http://{userinfo}127.0.0.1:{server.port}/image.png", LOCAL)
    assert error.reason == REASON_NOT_ALLOWED
    assert "credentials" in error.detail and "password" not in error.detail
    assert loopback_only == []


# --- redirects: every hop is checked ----------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{second}/image.png",  # another loopback host: a real server listens there
        "http://[::1]:{second}/image.png",
        "http://2130706434:{second}/image.png",  # 127.0.0.2 as one number
        "http://0x7f.2:{second}/image.png",
        "http://10.0.0.1/image.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
    ],
)
def test_a_redirect_to_a_blocked_address_is_refused(
    server: _Server, second: _Server, public_stand_in: None, loopback_only: list[str], target: str
) -> None:
    assert fetch_http(server.url("/image.png"), STRICT) == png()  # the stand-in public host is reachable
    location = target.format(second=second.port)
    before = len(second.requests)
    error = refused(server.url(f"/redirect?to={location}"), STRICT)
    assert error.reason == REASON_BLOCKED_ADDRESS
    assert len(second.requests) == before
    assert set(loopback_only) == {"127.0.0.1"}  # only the first hop was ever connected to


def test_a_redirect_to_metadata_is_refused_even_with_private_networks_allowed(
    server: _Server, loopback_only: list[str]
) -> None:
    error = refused(server.url("/redirect?to=http://169.254.169.254/latest/meta-data/"), LOCAL)
    assert error.reason == REASON_BLOCKED_ADDRESS
    assert "metadata" in error.detail
    assert "169.254.169.254" not in loopback_only


def test_a_redirect_off_the_host_allow_list_is_refused(server: _Server, second: _Server) -> None:
    limits = ImageSettings(allow_private_networks=True, allowed_url_hosts=["127.0.0.1"])
    before = len(second.requests)
    error = refused(server.url(f"/redirect?to={second.url('/image.png')}"), limits)
    assert error.reason == REASON_NOT_ALLOWED
    assert "127.0.0.2" in error.detail
    assert len(second.requests) == before


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/a.png", "gopher://127.0.0.1:11211/_stats"])
def test_a_redirect_to_another_scheme_is_refused(server: _Server, location: str) -> None:
    error = refused(server.url(f"/redirect?to={location}"), LOCAL)
    assert error.reason == REASON_NOT_ALLOWED


def test_a_redirect_with_credentials_is_refused(server: _Server) -> None:
    error = refused(server.url(f"/redirect?to=http://admin:pw@127.0.0.1:{server.port}/image.png"), LOCAL)
    assert error.reason == REASON_NOT_ALLOWED


def test_redirects_are_followed_up_to_the_cap(server: _Server) -> None:
    assert fetch_http(server.url("/chain/5"), LOCAL) == png()  # 5 redirects: the default cap
    error = refused(server.url("/chain/6"), LOCAL)
    assert error.reason == REASON_FETCH_FAILED
    assert "more than 5 redirects" in error.detail
    assert refused(server.url("/chain/1"), ImageSettings(allow_private_networks=True, max_redirects=0)).reason == (
        REASON_FETCH_FAILED
    )


def test_relative_redirects_resolve_against_the_current_url(server: _Server) -> None:
    assert fetch_http(server.url("/redirect?to=/image.png"), LOCAL) == png()


def test_a_redirect_without_location_fails(server: _Server) -> None:
    error = refused(server.url("/no-location"), LOCAL)
    assert error.reason == REASON_FETCH_FAILED
    assert "without a Location" in error.detail


# --- what is sent -----------------------------------------------------------------------------------


def test_no_cookie_or_credentials_are_ever_sent(server: _Server) -> None:
    before = len(server.requests)
    assert fetch_http(server.url("/login"), LOCAL) == png()
    sent = server.requests[before:]
    assert [path for path, _ in sent] == ["/login", "/image.png"]
    for _, headers in sent:
        names = {name.lower() for name in headers}
        assert not names & {"cookie", "authorization", "proxy-authorization"}
        assert names <= {"host", "user-agent", "accept", "accept-encoding", "connection"}
        assert headers["Accept-Encoding"] == "identity"  # no compressed body to inflate past the byte cap


def test_the_connection_goes_to_the_checked_address_not_a_second_lookup(
    server: _Server, public_stand_in: None, loopback_only: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the first answer is checked, a later one would be the metadata service."""
    real_getaddrinfo = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "images.rebind.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        answer = "127.0.0.1" if len(lookups) == 1 else "169.254.169.254"
        return real_getaddrinfo(answer, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    before = len(server.requests)
    assert fetch_http(f"http://images.rebind.test:{server.port}/image.png", STRICT) == png()
    assert lookups == ["images.rebind.test"]  # resolved once, by the guard
    assert set(loopback_only) == {"127.0.0.1"}
    assert server.requests[before][1]["Host"] == f"images.rebind.test:{server.port}"  # virtual hosting still works


def test_a_name_with_any_blocked_address_is_refused(
    server: _Server, public_stand_in: None, loopback_only: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_getaddrinfo = socket.getaddrinfo

    def two_answers(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "mixed.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        public, private = (real_getaddrinfo(a, port, *args, **kwargs) for a in ("127.0.0.1", "10.0.0.1"))
        return public + private

    monkeypatch.setattr(socket, "getaddrinfo", two_answers)
    error = refused(f"http://mixed.test:{server.port}/image.png", STRICT)
    assert error.reason == REASON_BLOCKED_ADDRESS and "10.0.0.1" in error.detail
    assert loopback_only == []


def test_an_unresolvable_name_fails_to_fetch(loopback_only: list[str]) -> None:
    error = refused("http://no-such-host.invalid/a.png", LOCAL)  # .invalid never resolves (RFC 6761)
    assert error.reason == REASON_FETCH_FAILED
    assert loopback_only == []


# --- bytes and time ---------------------------------------------------------------------------------


def test_an_endless_chunked_body_is_cut_at_the_byte_cap(server: _Server) -> None:
    error = refused(server.url("/endless"), ImageSettings(allow_private_networks=True, max_bytes=100_000))
    assert error.reason == REASON_TOO_LARGE
    assert error.detail == "more than 100000 bytes"


def test_trickled_headers_are_cut_at_the_fetch_timeout(server: _Server) -> None:
    limits = ImageSettings(allow_private_networks=True, fetch_timeout_s=0.5)
    started = time.monotonic()
    error = refused(server.url("/slow-headers"), limits)
    elapsed = time.monotonic() - started
    assert error.reason == REASON_FETCH_FAILED
    assert "fetch timeout" in error.detail
    assert elapsed < 1.5  # every byte came within the socket timeout: only the total deadline stops it


def test_the_fetch_timeout_covers_the_whole_redirect_chain(server: _Server) -> None:
    limits = ImageSettings(allow_private_networks=True, fetch_timeout_s=0.5)
    started = time.monotonic()
    error = refused(server.url("/redirect?to=/slow-headers"), limits)
    assert error.reason == REASON_FETCH_FAILED
    assert time.monotonic() - started < 1.5


# --- https: pinned to the checked address, still verified against the host name --------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for localhost and 127.0.0.1 (key and certificate in one PEM file)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    both = directory / "both.pem"
    both.write_bytes(key.read_bytes() + cert.read_bytes())
    return both


@pytest.fixture(scope="module")
def tls_server(certificate: Path) -> Iterator[_Server]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate)
    for server in _serve("127.0.0.1"):
        server.socket = context.wrap_socket(server.socket, server_side=True)
        yield server


@pytest.fixture
def trust_test_certificate(monkeypatch: pytest.MonkeyPatch, certificate: Path) -> None:
    """The fetcher's trust store, plus the test certificate (verification itself stays on)."""
    monkeypatch.setattr(fetch_module, "_tls_context", lambda: ssl.create_default_context(cafile=str(certificate)))


def https_url(server: _Server, path: str, host: str = "127.0.0.1") -> str:
    return f"https://{host}:{server.port}{path}"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_https_loads_from_the_checked_address(tls_server: _Server, trust_test_certificate: None, host: str) -> None:
    assert fetch_http(https_url(tls_server, "/image.png", host), LOCAL) == png()


def test_https_is_still_refused_on_a_blocked_address(tls_server: _Server, trust_test_certificate: None) -> None:
    assert refused(https_url(tls_server, "/image.png"), STRICT).reason == REASON_BLOCKED_ADDRESS


def test_an_untrusted_certificate_fails(tls_server: _Server) -> None:
    error = refused(https_url(tls_server, "/image.png"), LOCAL)  # self-signed, not in the system store
    assert error.reason == REASON_FETCH_FAILED
    assert "CERTIFICATE_VERIFY_FAILED" in error.detail


def test_pinning_does_not_skip_the_host_name_check(
    tls_server: _Server, trust_test_certificate: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name resolving to the right address is still refused when the certificate is not for it."""
    real_getaddrinfo = socket.getaddrinfo

    def resolver(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return real_getaddrinfo("127.0.0.1" if host == "images.other.test" else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    error = refused(https_url(tls_server, "/image.png", "images.other.test"), LOCAL)
    assert error.reason == REASON_FETCH_FAILED
    assert "images.other.test" in error.detail and "CERTIFICATE_VERIFY_FAILED" in error.detail


def test_an_https_redirect_to_plain_http_is_refused(
    tls_server: _Server, server: _Server, trust_test_certificate: None
) -> None:
    before = len(server.requests)
    error = refused(https_url(tls_server, f"/redirect?to={server.url('/image.png')}"), LOCAL)
    assert error.reason == REASON_NOT_ALLOWED
    assert "https to plain http" in error.detail
    assert len(server.requests) == before
    assert fetch_http(https_url(tls_server, "/redirect?to=/image.png"), LOCAL) == png()  # https to https is fine
