"""What is replayed and how: filters, sampling, safety rules and rewriting, applied to one captured
exchange at a time. Pure: no I/O; the caller resolves the target's addresses and passes them in
(a ``ServerCheck``, replay/captured_server.py: the one "is this the captured server" check).

``Policy.decide(exchange)`` returns either a ``Prepared`` request (its wire bytes ready to write
to the target) or a ``Skip`` with the reason. The batch replay and the live mirror share it.

Order of the checks (each one cheap, first match wins): no request, truncated request body,
method filter, path filter, header filter, sampling, safety. The refusal to replay into the
captured server itself is not a skip: it raises ``ReplayRefused`` (the whole run is wrong).

Rewriting of the request that goes out:
  - Host: the target's authority, unless ``keep_host`` (the captured Host) or ``host_suffix``
    (the captured Host with the suffix added to its name, Istio's ``-shadow`` convention);
  - framing is re-done: the captured body is already de-chunked, so Transfer-Encoding and the
    captured Content-Length are dropped and Content-Length is set to the body's length; Connection,
    Keep-Alive, Proxy-Connection, TE, Upgrade and Expect are dropped (the client manages its own
    connections and sends bodies at once); the request line is always HTTP/1.1;
  - ``drop_headers`` removed, then ``set_headers`` replace any same-named header;
  - URL rewrites: each (regex, replacement) is applied in order to the request target with
    ``re.sub``;
  - unsafe methods sent under ``allow_unsafe`` carry ``Idempotency-Key: shadowtap-<exchange id>``,
    stable per captured exchange (every copy of it carries the same key), unless the request
    already has one or ``idempotency_key`` is off.
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from shadowtap.errors import InputError, TargetError
from shadowtap.frozen import fast_init
from shadowtap.records import Exchange, Headers, header_value
from shadowtap.replay.captured_server import Endpoint, ServerCheck, ThisHost

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Headers the client owns: framing and connection management are re-done for the target.
# Proxy-Authorization is the client's credential for a proxy on its way, never for the shadow
# (issue 12 item 10: the mirror forwarded it).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "transfer-encoding",
        "content-length",
        "expect",
        "host",
        "proxy-authorization",
    }
)
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
HEADS_MEMO = 512  # distinct captured heads whose outgoing block a Policy remembers


class SkipReason(enum.Enum):
    NO_REQUEST = "no_request"  # a response without its request in the capture
    BODY_TRUNCATED = "body_truncated"  # the capture cut the request body: it cannot be re-sent
    METHOD = "method_filter"
    PATH = "path_filter"
    HEADER = "header_filter"
    SAMPLED_OUT = "sampled_out"
    UNSAFE = "unsafe_method"  # not GET/HEAD/OPTIONS, not an allowed route, no --allow-unsafe
    # A method or header name that is no token, CR/LF/NUL in the target or a value: sent, it
    # would be another request on the wire (CRLF injection). records.request_line_problem.
    UNSENDABLE = "unsendable"
    # Read back from a redacted capture: a header, query parameter or body field holds a
    # ``redacted:<hash>`` placeholder that no --substitute/--set-header/--drop-header replaces
    # (sent, it draws 401s that look like regressions). replay --redacted send sends them.
    REDACTED = "redacted_secret"


@dataclass(frozen=True, slots=True)
class Skip:
    reason: SkipReason


class ReplayRefused(TargetError):
    """The target is the server the traffic was captured from: replaying would double its load."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where requests go: ``http://host:port[/prefix]`` (https too). ``prefix`` is prepended to
    every request target (``http://shadow:8080/api`` sends ``/v1/x`` as ``/api/v1/x``)."""

    url: str
    scheme: str
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https"):
            raise InputError(
                f"target must be an http:// or https:// URL, not {url!r}", field="target"
            )
        if not parts.hostname:
            raise InputError(f"target {url!r} has no host", field="target")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise InputError(f"target {url!r}: {exc}", field="target") from exc
        return cls(
            url=url,
            scheme=parts.scheme,
            host=parts.hostname,
            port=port,
            prefix=parts.path.rstrip("/"),
        )

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def base(self) -> str:
        """The URL of the target's origin, without the prefix: ``http://host:port``."""
        return f"{self.scheme}://{self.authority}"


@dataclass(frozen=True, slots=True)
class Route:
    """``METHOD PATH`` allowed even when the method is unsafe. PATH is matched against the request
    path (without the query) as a shell pattern: ``/v1/predict``, ``/v1/models/*/predict``."""

    method: str
    path: str

    @classmethod
    def parse(cls, text: str) -> Route:
        method, _, path = text.strip().partition(" ")
        path = path.strip()
        if not method or not path.startswith("/"):
            raise InputError(f"route {text!r} is not 'METHOD /path'", field="allow")
        return cls(method.upper(), path)

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and fnmatch.fnmatchcase(path, self.path)


@fast_init
@dataclass(frozen=True, slots=True)
class Prepared:
    """One request ready to send: ``wire`` is the whole HTTP/1.1 request (line, headers, body).

    ``lane`` names the captured connection (client and server endpoints): requests of one lane are
    replayed in order on one connection to the target. ``url`` is what results record as target.
    ``http2``: captured as HTTP/2, so replayed over HTTP/2 (replay/h2_client.py; gRPC calls go to
    grpcio whatever it says); ``headers`` are then sent as the fields of a HEADERS frame."""

    exchange_id: str
    method: str
    target: str
    url: str
    headers: Headers
    body: bytes
    wire: bytes
    lane: str
    index: int
    http2: bool = False

    @property
    def is_head(self) -> bool:
        return self.method == "HEAD"


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything that decides whether and how one exchange is replayed. See the module doc."""

    target: Target
    keep_host: bool = False
    host_suffix: str | None = None
    set_headers: tuple[tuple[str, str], ...] = ()
    drop_headers: frozenset[str] = frozenset()  # lower-case names
    url_rewrites: tuple[tuple[re.Pattern[str], str], ...] = ()
    methods: frozenset[str] = frozenset()  # empty: any method
    path_pattern: re.Pattern[str] | None = None  # re.search on the request target
    header_filters: tuple[tuple[str, re.Pattern[str] | None], ...] = ()  # (lower name, value regex)
    sample_percent: float = 100.0
    sample_key: str = "client"  # "client" (address) or "header:NAME"
    allow: tuple[Route, ...] = ()
    allow_unsafe: bool = False
    idempotency_key: bool = True
    force: bool = False
    # The refusal to replay into the captured server (its target endpoints: resolved, then the
    # real peers of the client's connections); None: no check (the mirror checks its own way).
    servers: ServerCheck | None = field(default=None, compare=False)
    # Derived once (every request needs them): the lower-case names of set_headers, the
    # target's authority and base URL.
    _set_names: frozenset[str] = field(init=False, compare=False, repr=False)
    _authority: str = field(init=False, compare=False, repr=False)
    _base: str = field(init=False, compare=False, repr=False)
    # Captured heads -> their outgoing block (``_head_block``), at most HEADS_MEMO (cleared when
    # full): the per-field work runs once per distinct head, a dict lookup for the rest.
    _heads: dict[Headers, tuple[Headers, str, bool, bool]] = field(
        init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_heads", {})
        object.__setattr__(self, "_set_names", frozenset(n.lower() for n, _ in self.set_headers))
        object.__setattr__(self, "_authority", self.target.authority)
        object.__setattr__(self, "_base", self.target.base)
        if not 0.0 <= self.sample_percent <= 100.0:
            raise InputError(
                f"sample percent must be in 0..100, not {self.sample_percent}",
                field="sample_percent",
            )
        if self.sample_key != "client" and not self.sample_key.startswith("header:"):
            raise InputError(
                f"sample key must be 'client' or 'header:NAME', not {self.sample_key!r}",
                field="sample_key",
            )

    def decide(self, exchange: Exchange) -> Prepared | Skip:
        """The request to send for ``exchange``, or why not. Raises ReplayRefused when the target is
        the captured server (unless ``force``). Cost: O(headers + body) for the wire bytes."""
        req = exchange.request
        if req is None:
            return Skip(SkipReason.NO_REQUEST)
        if req.send_problem() is not None:
            return Skip(SkipReason.UNSENDABLE)
        if not self.force and self.servers is not None:
            self.servers.check(exchange.server)
        if req.body_truncated:
            return Skip(SkipReason.BODY_TRUNCATED)
        method = req.method.upper()
        if self.methods and method not in self.methods:
            return Skip(SkipReason.METHOD)
        if self.path_pattern is not None and self.path_pattern.search(req.target) is None:
            return Skip(SkipReason.PATH)
        for name, pattern in self.header_filters:
            value = header_value(req.headers, name)
            if value is None or (pattern is not None and pattern.search(value) is None):
                return Skip(SkipReason.HEADER)
        if self.sample_percent < 100.0 and not self._sampled_in(exchange):
            return Skip(SkipReason.SAMPLED_OUT)
        unsafe = method not in SAFE_METHODS
        if unsafe:
            path = req.target.split("?", 1)[0]
            allowed_route = any(r.matches(method, path) for r in self.allow)
            if not allowed_route and not self.allow_unsafe:
                return Skip(SkipReason.UNSAFE)
            add_key = not allowed_route and self.idempotency_key
        else:
            add_key = False
        return self._prepare(exchange, method, add_key)

    def with_server_check(
        self, targets: Iterable[tuple[str, int]], host: ThisHost | None = None
    ) -> Policy:
        """This policy refusing the captured server, the target being at ``targets`` (its
        resolved (ip, port) endpoints); ``host``: this host's addresses (discovered by default)."""
        eps = [Endpoint.of(ip, port) for ip, port in targets]
        check = ServerCheck([e for e in eps if e is not None], self._refusal, host=host)
        return replace(self, servers=check)

    def _refusal(self, target: Endpoint, server: Endpoint) -> ReplayRefused:
        return ReplayRefused(
            f"the target {self.target.url} is {server}, the server this traffic was captured "
            f"from (it reaches {target}): replaying into it doubles its load",
            hint="point --target at the shadow, or pass --force if this is really intended",
        )

    def _sampled_in(self, exchange: Exchange) -> bool:
        """Consistent sampling: the decision depends only on the key, so one user's requests are
        all in or all out, in every run and in the mirror alike."""
        key: str | None = None
        if self.sample_key.startswith("header:") and exchange.request is not None:
            key = header_value(exchange.request.headers, self.sample_key[7:])
        if key is None:  # "client", or the header is missing: the client's address
            key = exchange.client.rsplit(":", 1)[0].strip("[]")
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
        h = int.from_bytes(digest, "big")
        return (h % 1_000_000) < self.sample_percent * 10_000

    def _prepare(self, exchange: Exchange, method: str, add_key: bool) -> Prepared:
        req = exchange.request
        assert req is not None
        target = req.target
        if target[:1] != "/" and "://" in target:
            # absolute-form (a request to a proxy): the target gets the origin-form
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        for pattern, repl in self.url_rewrites:
            target = pattern.sub(repl, target)
        if self.target.prefix and target.startswith("/"):
            target = self.target.prefix + target
        memo = self._heads
        block = memo.get(req.headers)
        if block is None:
            block = self._head_block(req.headers)
            if len(memo) >= HEADS_MEMO:
                memo.clear()
            memo[req.headers] = block
        kept, text, had_length, has_key = block
        extra: list[tuple[str, str]] = []
        if add_key and not has_key and "idempotency-key" not in self._set_names:
            extra.append(("Idempotency-Key", f"shadowtap-{exchange.id}"))
        body = req.body
        if body or had_length or method in _METHODS_WITH_BODY:
            extra.append(("Content-Length", str(len(body))))
        if extra:
            headers = kept + tuple(extra)
            text += "".join([f"{n}: {v}\r\n" for n, v in extra])
        else:
            headers = kept
        head = f"{method} {target} HTTP/1.1\r\n{text}\r\n"
        return Prepared(
            exchange_id=exchange.id,
            method=method,
            target=target,
            url=self._base + target,
            headers=headers,
            body=body,
            wire=head.encode("latin-1", "replace") + body,
            lane=f"{exchange.client}>{exchange.server}",
            index=exchange.index,
            http2=req.version == "HTTP/2",
        )

    def _head_block(self, captured: Headers) -> tuple[Headers, str, bool, bool]:
        """What a captured head becomes on the way out, for every request with that head: the
        fields kept (Host first, hop-by-hop and dropped ones out, ``set_headers`` added), their
        wire text, whether the head framed a body, whether it carries an Idempotency-Key. A
        pure function of the head and the policy (``_prepare`` memoizes it: a service's heads
        repeat)."""
        if self.keep_host or self.host_suffix:
            host = header_value(captured, "host") or self.target.authority
            if self.host_suffix:
                host = _suffix_host(host, self.host_suffix)
        else:
            host = self._authority
        set_names = self._set_names
        headers: list[tuple[str, str]] = [] if "host" in set_names else [("Host", host)]
        had_length = False
        has_key = False
        lnames = [n.lower() for n, _ in captured]
        # Headers the captured Connection header names are hop-by-hop too (RFC 9110 7.6.1).
        conn_named = (
            {
                t.strip().lower()
                for ln, (_, v) in zip(lnames, captured, strict=True)
                if ln == "connection"
                for t in v.split(",")
            }
            if "connection" in lnames
            else ()
        )
        for lname, (name, value) in zip(lnames, captured, strict=True):
            if lname in ("content-length", "transfer-encoding"):
                had_length = True
            if (
                lname in _HOP_BY_HOP
                or lname in self.drop_headers
                or lname in set_names
                or lname in conn_named
            ):
                continue
            if lname[:1] == ":":  # an HTTP/2 pseudo-header: the request line and Host carry them
                continue
            if lname == "idempotency-key":
                has_key = True
            headers.append((name, value))
        headers.extend(self.set_headers)
        text = "".join([f"{n}: {v}\r\n" for n, v in headers])
        return tuple(headers), text, had_length, has_key


def _suffix_host(host: str, suffix: str) -> str:
    """``api.example.com:8080`` + ``-shadow`` -> ``api.example.com-shadow:8080`` (IPv6 literal
    hosts are left alone: a suffix cannot make a name of them)."""
    if host.startswith("["):
        return host
    name, sep, port = host.partition(":")
    return f"{name}{suffix}{sep}{port}"


def parse_header_pairs(values: Sequence[str], field: str) -> tuple[tuple[str, str], ...]:
    """``Name: value`` options (``--set-header``) into pairs."""
    out = []
    for v in values:
        name, sep, value = v.partition(":")
        if not sep or not name.strip() or any(c in name for c in " \t\r\n"):
            raise InputError(f"{v!r} is not 'Name: value'", field=field)
        if "\r" in value or "\n" in value:
            raise InputError(f"{v!r}: header value has a line break", field=field)
        out.append((name.strip(), value.strip()))
    return tuple(out)


def parse_header_filters(values: Sequence[str]) -> tuple[tuple[str, re.Pattern[str] | None], ...]:
    """``--header NAME`` (present) or ``--header NAME=REGEX`` (value matches)."""
    out = []
    for v in values:
        name, sep, pattern = v.partition("=")
        if not name.strip():
            raise InputError(f"{v!r} is not 'NAME' or 'NAME=REGEX'", field="header")
        out.append((name.strip().lower(), compile_regex(pattern, "header") if sep else None))
    return tuple(out)


def parse_rewrites(values: Sequence[str]) -> tuple[tuple[re.Pattern[str], str], ...]:
    """``--rewrite REGEX=REPLACEMENT`` (split at the first ``=`` not inside the regex is
    ambiguous, so the separator is ``=>``: ``^/v1/=>/v2/``)."""
    out = []
    for v in values:
        pattern, sep, repl = v.partition("=>")
        if not sep:
            raise InputError(f"{v!r} is not 'REGEX=>REPLACEMENT'", field="rewrite")
        out.append((compile_regex(pattern, "rewrite"), repl))
    return tuple(out)


def compile_regex(pattern: str, field: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InputError(f"bad regular expression {pattern!r}: {exc}", field=field) from exc


def parse_methods(values: Collection[str]) -> frozenset[str]:
    return frozenset(m.strip().upper() for v in values for m in v.split(",") if m.strip())


def policy_from_options(
    target: Target,
    *,
    keep_host: bool = False,
    host_suffix: str | None = None,
    set_header: Sequence[str] = (),
    drop_header: Sequence[str] = (),
    rewrite: Sequence[str] = (),
    method: Collection[str] = (),
    path: str | None = None,
    header: Sequence[str] = (),
    sample_percent: float = 100.0,
    sample_key: str = "client",
    allow: Sequence[str] = (),
    allow_unsafe: bool = False,
    idempotency_key: bool = True,
    force: bool = False,
) -> Policy:
    """The Policy of the command-line options shared by ``replay`` and ``mirror`` (their texts
    parsed; errors name the option)."""
    return Policy(
        target=target,
        keep_host=keep_host,
        host_suffix=host_suffix,
        set_headers=parse_header_pairs(set_header, "set_header"),
        drop_headers=frozenset(h.strip().lower() for h in drop_header),
        url_rewrites=parse_rewrites(rewrite),
        methods=parse_methods(method),
        path_pattern=compile_regex(path, "path") if path else None,
        header_filters=parse_header_filters(header),
        sample_percent=sample_percent,
        sample_key=sample_key,
        allow=tuple(Route.parse(r) for r in allow),
        allow_unsafe=allow_unsafe,
        idempotency_key=idempotency_key,
        force=force,
    )
