"""Wiring for `moderation console`: settings -> database, accounts, queue, media, policies, publisher ->
the app under uvicorn, with /metrics, /healthz and /readyz on their own port (as the worker has)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta

import structlog
import uvicorn

from consumers.console.app import ConsoleContext, MediaReader, create_app
from consumers.console.metrics import ConsoleMetrics
from consumers.console.publisher import DecisionPublisher
from consumers.console.security import Authenticator, LoginLimiter, TrustedProxies
from consumers.ops import CachedCheck, OpsServer
from consumers.settings import Settings
from moderation.exceptions import ConfigurationError, PolicyError
from moderation.policy import LoadedPolicy
from moderation.policy_book import PolicyFiles
from moderation.storage import VerdictStore, open_engine
from moderation.storage.accounts import Accounts
from moderation.storage.audit_log import AuditLog
from moderation.storage.review_queue import ReviewQueue
from moderation.storage.review_reads import ReviewReads

log = structlog.get_logger("moderation.console")


class _Policies:
    """The policies the console explains scores with, by hash, re-read when the files change."""

    def __init__(self, settings: Settings) -> None:
        try:
            self._files: PolicyFiles | None = PolicyFiles(settings.policy)
        except PolicyError as exc:  # the console still serves; thresholds are then shown as unknown
            log.warning("policy files not loaded: thresholds will not be shown", error=str(exc))
            self._files = None
        self._known: dict[str, LoadedPolicy] = {}

    def __call__(self) -> dict[str, LoadedPolicy]:
        if self._files is not None:
            self._files.check()
            # Keep every version seen since start: a verdict made under the previous one is still explained.
            self._known.update({p.sha256: p for p in self._files.book.every_policy()})
        return self._known


def media_store(settings: Settings) -> MediaReader | None:
    from moderation.media import DirectoryMediaStore

    return DirectoryMediaStore(settings.media_directory) if settings.media.enabled else None


@contextmanager
def console_context(settings: Settings, *, publish: bool = True) -> Iterator[ConsoleContext]:
    """Everything the app needs, opened in order and closed in reverse."""
    console = settings.console
    with ExitStack() as stack:
        engine = stack.enter_context(open_engine(settings.database_url, require_schema=True))
        accounts = Accounts(engine, session_ttl=timedelta(hours=console.session_hours))
        queue = ReviewQueue(engine, lease=timedelta(minutes=console.claim_minutes), label_first=console.label_first)
        metrics = ConsoleMetrics(queue.pending_counts)
        publisher = None
        if publish:
            from consumers.clients import make_producer

            publisher = DecisionPublisher(
                queue, lambda: make_producer(settings), settings.kafka.decisions_topic,
                on_published=metrics.published.inc,
            ).start()
            stack.callback(publisher.stop)
        search = None
        if console.search:
            from consumers.console.search import ConsoleSearch
            from moderation.clip_scorer import ClipScorer

            search = ConsoleSearch(engine, lambda: ClipScorer.from_settings(settings.model),
                                   refresh_every=console.search_refresh_s).start()
            metrics.watch_search(lambda: search.status.size)
        try:
            proxies = TrustedProxies(console.trusted_proxies)
        except ValueError as exc:
            raise ConfigurationError(f"MODERATION_CONSOLE__TRUSTED_PROXIES: {exc}") from exc
        yield ConsoleContext(
            queue=queue, accounts=accounts, audit=AuditLog(engine), reads=ReviewReads(engine),
            verdicts=VerdictStore(engine),
            authenticator=Authenticator(accounts, proxies, console.identity_header),
            limiter=LoginLimiter(console.login_attempts_per_minute), metrics=metrics,
            media=media_store(settings), policies=_Policies(settings),
            notify_decision=publisher.notify if publisher is not None else (lambda: None),
            session_ttl=timedelta(hours=console.session_hours),
            search=search, image_limits=settings.images,
            extra={"publisher": publisher},
        )


def serve(
    settings: Settings, stop: threading.Event, *, on_listening: Callable[[int, int], None] | None = None
) -> None:
    """Serve the console until `stop` is set (SIGTERM, SIGINT); `on_listening(port, ops_port)` once it serves."""
    console = settings.console
    with console_context(settings) as context:
        store = context.verdicts
        publisher: DecisionPublisher | None = context.extra.get("publisher")

        def database() -> tuple[bool, str]:
            store.ping()
            return True, "ok"

        def decisions() -> tuple[bool, str]:
            # Readiness does not depend on the broker: decisions wait in the outbox meanwhile.
            error = publisher.last_error if publisher is not None else None
            return True, f"outbox waiting: {error}" if error else "ok"

        try:
            listener = _bind(console.host, console.port)
            ops = OpsServer(
                console.host, console.ops_port, context.metrics.registry, {"alive": lambda: (True, "ok")},
                {"database": CachedCheck(database), "decisions": decisions},
            ).start()
        except OSError as exc:
            where = f"{console.host}:{console.port} (ops port {console.ops_port})"
            raise ConfigurationError(f"the console cannot listen on {where}: {exc.strerror or exc}") from exc
        try:
            config = uvicorn.Config(
                create_app(context), host=console.host, port=console.port, log_config=None, access_log=False,
                proxy_headers=False, server_header=False,
            )
            server = uvicorn.Server(config)
            server.install_signal_handlers = lambda: None  # type: ignore[method-assign] - `stop` is ours
            threading.Thread(target=_stop_when, args=(stop, server), daemon=True).start()
            log.info("console serving", host=console.host, port=listener.getsockname()[1], ops_port=ops.port)
            if on_listening is not None:
                threading.Thread(
                    target=_announce, args=(server, lambda: on_listening(listener.getsockname()[1], ops.port)),
                    daemon=True,
                ).start()
            server.run(sockets=[listener])
        finally:
            ops.stop()
            listener.close()


def _bind(host: str, port: int) -> socket.socket:
    """The console's listening socket, bound here so a taken port is one clear error, not uvicorn's exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError:
        listener.close()
        raise
    listener.listen(128)
    return listener


def _stop_when(stop: threading.Event, server: uvicorn.Server) -> None:
    stop.wait()
    server.should_exit = True


def _announce(server: uvicorn.Server, announce: Callable[[], None]) -> None:
    while not server.started and not server.should_exit:
        threading.Event().wait(0.05)
    if server.started:
        announce()
