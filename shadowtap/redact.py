"""Secrets: what counts as one, and how it is redacted. The one module every command asks
(extract, capture, replay, mirror, compare's reports): docs/security.md lists the rules.

What is a secret (``SecretRules``), decided by names and by value shapes, never by a substring:

- headers: ``DEFAULT_SECRET_HEADERS`` (Authorization, Cookie, Set-Cookie, Proxy-Authorization,
  X-Api-Key, X-Auth-Token, ...), plus any header whose name is a secret name (below);
- names of query parameters, form fields and JSON fields: split into words (``-``, ``_``, ``.``,
  camelCase), a name is a secret when it is one of ``SECRET_NAMES`` (``password``, ``api_key``,
  ``access_token``, ``client_secret``, ...), or its last word is one of ``SECRET_WORDS``
  (``token``, ``password``, ``secret``, ...: ``github_token``, ``userPassword``), or its last two
  words one of ``SECRET_PAIRS`` (``api key``, ``private key``, ``session id``). The plural
  ``tokens`` is a count, not a credential: ``usage.completion_tokens``, ``total_tokens``,
  ``max_tokens`` are never secrets; ``NOT_SECRET_NAMES`` says so for names that would match;
- values whatever their name, by shape: a JSON Web Token, ``Bearer ...``, AWS access key ids,
  GitHub/Slack/OpenAI-style API keys, PEM private keys (``SECRET_SHAPES``);
- only strings are secrets: a number, a boolean or null under a secret name is kept.

Configurable the same way for every command: a TOML file at ``$SHADOWTAP_SECRETS`` (default
``~/.config/shadowtap/secrets.toml`` when it exists) with lists ``headers``, ``names`` (more
secret names) and ``not_secret`` (names never redacted), plus ``--secret-header`` where a command
has it.

How: in stored records (exchanges, results) a secret value becomes ``redacted:<hmac>``, a keyed
hash (HMAC-SHA256, 16 hex digits), so comparisons still see equal and unequal values without
storing them; in headers, in the request target's query, in form bodies and in JSON bodies (by
their text, so a cut body is redacted too; bodies under a Content-Encoding are not decoded and
stay as they are). Reports show ``[redacted]`` instead. The key is per machine, kept in
``$SHADOWTAP_KEY_FILE`` (default ``~/.config/shadowtap/redact.key``, created 0600 on first use), so
two captures on the same machine hash the same value alike.

Cost: a request or response without any candidate name in its head or body costs a few substring
searches; the capture pipeline asks the Redactor only about heads its parser flagged
(``watch_names``) and about JSON/form bodies.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable
from typing import Any

from shadowtap.jsonl import create_private
from shadowtap.records import Exchange, Headers, Message, Request, Result

DEFAULT_SECRET_HEADERS = (
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
    "x-api-key",
    "x-auth-token",
    "x-access-token",
    "x-csrf-token",
    "x-xsrf-token",
    "x-amz-security-token",
    "api-key",
)
SECRET_NAMES = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "pass",
        "passphrase",
        "secret",
        "token",
        "api_key",
        "apikey",
        "access_token",
        "refresh_token",
        "id_token",
        "auth_token",
        "session",
        "sessionid",
        "sid",
        "credential",
        "credentials",
        "private_key",
        "authorization",
        "cookie",
        "signature",
        "sig",
        "otp",
        "ssn",
        "cvv",
        "cvc",
        "card_number",
        "client_secret",
    }
)
SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "secret",
        "token",
        "apikey",
        "credential",
        "credentials",
        "cookie",
        "authorization",
    }
)
SECRET_PAIRS = frozenset(
    {
        ("api", "key"),
        ("private", "key"),
        ("secret", "key"),
        ("access", "key"),
        ("session", "id"),
        ("session", "key"),
        ("auth", "key"),
        ("card", "number"),
    }
)
NOT_SECRET_NAMES = frozenset(
    {
        "max_tokens",
        "total_tokens",
        "completion_tokens",
        "prompt_tokens",
        "token_type",
        "token_count",
        "tokens",
        "max_completion_tokens",
        "key_id",
        "cache_key",
        "sort_key",
    }
)
SECRET_SHAPES = re.compile(
    r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"  # JWT
    r"|\bBearer\s+[A-Za-z0-9._~+/=-]{16,}"
    r"|\bAIza[0-9A-Za-z_-]{35}"  # Google API key
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key id
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_[A-Za-z0-9_]{30,}"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|\bsk-[A-Za-z0-9_-]{20,}"  # OpenAI-style
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
REDACTED_PREFIX = "redacted:"
PLACEHOLDER = re.compile(r"redacted:[0-9a-f]{16}")
REPORT_REDACTED = "[redacted]"
# Candidate names, cheap to look for in a lower-cased head or body before anything is parsed.
WATCH_WORDS = (
    "token",
    "key",
    "pass",
    "pwd",
    "secret",
    "session",
    "sid",
    "auth",
    "sig",
    "cookie",
    "credential",
    "otp",
    "ssn",
    "cvv",
    "cvc",
    "card",
    "bearer",
    "aiza",
    "akia",
    "eyj",
)

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SPLIT = re.compile(r"[-_.\s]+")
# "name": "value" pairs of JSON text; the value may be cut at the end of a truncated body.
_JSON_PAIR = re.compile(rb'"((?:[^"\\]|\\.){1,100})"(\s*:\s*)"((?:[^"\\]|\\.)*)("|$)')
# name=value pairs of a query string or a form body.
_FORM_PAIR = re.compile(r"(^|[?&;])([^=&;#?]{1,100})=([^&;#]*)")
# key=value or "key": "value" in free text, for reports.
_TEXT_PAIR = re.compile(
    r"""(?P<k>["']?(?P<n>[\w.-]{1,100})["']?\s*[:=]\s*)(?P<v>"[^"]*"?|'[^']*'?|[^&\s,;"'}<]+)"""
)


def _words(name: str) -> list[str]:
    return [w for w in _SPLIT.split(_CAMEL.sub("_", name).lower()) if w]


@dataclasses.dataclass(frozen=True, slots=True)
class SecretRules:
    """The rules (module doc); ``load()`` gives the configured ones, the same in every command."""

    headers: frozenset[str] = frozenset(DEFAULT_SECRET_HEADERS)
    names: frozenset[str] = SECRET_NAMES
    not_secret: frozenset[str] = NOT_SECRET_NAMES

    @classmethod
    def load(cls, extra_headers: Iterable[str] = ()) -> SecretRules:
        """The default rules plus ``$SHADOWTAP_SECRETS`` (TOML: ``headers``, ``names``,
        ``not_secret``) and ``extra_headers``. InputError for a bad file."""
        base = _configured()
        extra = frozenset(h.strip().lower() for h in extra_headers if h.strip())
        return base if not extra else dataclasses.replace(base, headers=base.headers | extra)

    def is_secret_header(self, name: str) -> bool:
        lname = name.lower()
        return lname in self.headers or (lname not in self.not_secret and self.is_secret_name(name))

    def is_secret_name(self, name: str) -> bool:
        return _name_is_secret(name, self.names, self.not_secret)

    def is_secret_value(self, value: str) -> bool:
        return SECRET_SHAPES.search(value) is not None


@functools.lru_cache(maxsize=4096)
def _name_is_secret(name: str, names: frozenset[str], not_secret: frozenset[str]) -> bool:
    words = _words(name)
    if not words:
        return False
    joined = "_".join(words)
    if joined in not_secret or name.lower() in not_secret:
        return False
    if joined in names or "".join(words) in names:
        return True
    return words[-1] in SECRET_WORDS or (len(words) >= 2 and (words[-2], words[-1]) in SECRET_PAIRS)


@functools.lru_cache(maxsize=1)
def _configured() -> SecretRules:
    path = os.environ.get("SHADOWTAP_SECRETS") or os.path.expanduser(
        "~/.config/shadowtap/secrets.toml"
    )
    if not os.path.exists(path):
        if os.environ.get("SHADOWTAP_SECRETS"):
            from shadowtap.errors import InputError

            raise InputError("the secrets configuration does not exist", where=path)
        return SecretRules()
    import tomllib

    from shadowtap.errors import InputError

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"cannot read the secrets configuration: {exc}", where=path) from exc
    unknown = set(data) - {"headers", "names", "not_secret"}
    if unknown:
        raise InputError(
            f"unknown key(s) {', '.join(sorted(unknown))} (known: headers, names, not_secret)",
            where=path,
        )
    for k, v in data.items():
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise InputError(f"{k} must be a list of strings", where=path)
    norm = lambda xs: frozenset("_".join(_words(x)) for x in xs)  # noqa: E731
    return SecretRules(
        headers=frozenset(DEFAULT_SECRET_HEADERS) | {h.lower() for h in data.get("headers", ())},
        names=SECRET_NAMES | norm(data.get("names", ())),
        not_secret=NOT_SECRET_NAMES | norm(data.get("not_secret", ())),
    )


def key_path() -> str:
    return os.environ.get("SHADOWTAP_KEY_FILE") or os.path.expanduser(
        "~/.config/shadowtap/redact.key"
    )


def load_key(path: str | None = None) -> bytes:
    """The machine's redaction key, created (0600) when missing."""
    path = path or key_path()
    try:
        with open(path, "rb") as f:
            key = f.read()
        if len(key) >= 16:
            return key
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    key = secrets.token_bytes(32)
    with create_private(path) as f:  # never through a planted link
        f.write(key)
    return key


def _content_kind(headers: Headers) -> str | None:
    """``json`` or ``form`` for a body redaction can read (no Content-Encoding), else None."""
    ctype = ""
    for n, v in headers:
        if len(n) != 12 and len(n) != 16:  # neither name: no lower-casing (most headers)
            continue
        ln = n.lower()
        if ln == "content-encoding" and v.strip().lower() not in ("", "identity"):
            return None
        if ln == "content-type":
            ctype = v.lower()
    if "json" in ctype:
        return "json"
    if "x-www-form-urlencoded" in ctype:
        return "form"
    return None


HEADS_MEMO = 512  # distinct heads (and small bodies) a Redactor remembers (Redactor.headers)
SMALL_BODY = 512  # bytes: JSON bodies up to this size are remembered too (Redactor.json_text)
_UNSEEN = object()


@dataclasses.dataclass(frozen=True, slots=True)
class Redactor:
    """Replaces secret values with keyed hashes in headers, request targets and bodies."""

    key: bytes
    names: frozenset[str] = frozenset(DEFAULT_SECRET_HEADERS)  # secret header names, lower case
    rules: SecretRules = dataclasses.field(default_factory=SecretRules)
    # Heads already redacted -> their redacted form (None: unchanged). A service's heads repeat
    # (the same fields, a Date that changes once a second), so the per-field name and shape checks
    # run once per distinct head, not once a message: a dict lookup (the tuple's hash, in C) for
    # the rest. At most HEADS_MEMO heads (cleared when full); a pure function of the key and rules.
    # With each head its body's kind (``_content_kind``): the same lookup serves both.
    _heads: dict[Headers, tuple[Headers | None, str | None]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )
    # The same for small JSON bodies (at most SMALL_BODY bytes: a service's short answers repeat,
    # {"ok": true}); a longer body is redacted each time, as its chance to repeat is small.
    _bodies: dict[bytes, bytes] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def default(cls, extra: Iterable[str] = ()) -> Redactor:
        rules = SecretRules.load(extra)
        return cls(load_key(), rules.headers, rules)

    @property
    def watch_names(self) -> tuple[str, ...]:
        """Lower-case substrings whose presence in a head means it may hold a secret (a header,
        a query parameter): the capture parser flags such heads, only they are redacted."""
        return tuple(sorted(set(self.names) | set(WATCH_WORDS)))

    def hash_value(self, value: str) -> str:
        digest = hmac.new(self.key, value.encode("latin-1", "replace"), hashlib.sha256).hexdigest()
        return REDACTED_PREFIX + digest[:16]

    def _hash(self, value: str) -> str:
        return value if value.startswith(REDACTED_PREFIX) else self.hash_value(value)

    # -- pieces
    def headers(self, headers: Headers) -> Headers:
        out = self._head(headers)[0]
        return headers if out is None else out

    def _head(self, headers: Headers) -> tuple[Headers | None, str | None]:
        """(the redacted head, None when unchanged; its body's kind), remembered."""
        memo = self._heads
        known = memo.get(headers)
        if known is None:
            new = self._headers(headers)
            if len(memo) >= HEADS_MEMO:
                memo.clear()
            memo[headers] = known = (None if new is headers else new, _content_kind(headers))
        return known

    def _headers(self, headers: Headers) -> Headers:
        rules = self.rules
        names = self.names
        out = None
        for i, (n, v) in enumerate(headers):
            if (
                n.lower() in names or rules.is_secret_header(n) or rules.is_secret_value(v)
            ) and not v.startswith(REDACTED_PREFIX):
                if out is None:
                    out = list(headers)
                out[i] = (n, self.hash_value(v))
        return headers if out is None else tuple(out)

    def query(self, text: str) -> str:
        """A target's query string or a form body with secret parameters' values hashed."""
        rules = self.rules

        def sub(m: re.Match[str]) -> str:
            value = m.group(3)
            if value and (rules.is_secret_name(m.group(2)) or rules.is_secret_value(value)):
                return f"{m.group(1)}{m.group(2)}={self._hash(value)}"
            return m.group(0)

        return _FORM_PAIR.sub(sub, text)

    def target(self, target: str) -> str:
        path, sep, query = target.partition("?")
        if not sep or not query:
            return target
        new = self.query(query)
        return target if new == query else f"{path}?{new}"

    def json_text(self, body: bytes) -> bytes:
        """A JSON body with the string values of secret names (or of secret shapes) hashed, by
        its text: the rest is left byte for byte. O(body)."""
        if len(body) > SMALL_BODY:
            return self._json_text(body)
        memo = self._bodies
        out = memo.get(body)
        if out is None:
            out = self._json_text(body)
            if len(memo) >= HEADS_MEMO:
                memo.clear()
            memo[body] = out
        return out

    def _json_text(self, body: bytes) -> bytes:
        rules = self.rules

        def sub(m: re.Match[bytes]) -> bytes:
            name = m.group(1).decode("utf-8", "replace")
            value = m.group(3).decode("utf-8", "replace")
            if (
                value
                and (rules.is_secret_name(name) or rules.is_secret_value(value))
                and not value.startswith(REDACTED_PREFIX)
            ):
                return b'"%s"%s"%s"' % (m.group(1), m.group(2), self.hash_value(value).encode())
            return m.group(0)

        return _JSON_PAIR.sub(sub, body)

    def body(self, msg: Message, kind: str | None | object = _UNSEEN) -> bytes:
        """``msg``'s body with its secrets hashed (``kind``: its ``_content_kind`` when known)."""
        if not msg.body:
            return msg.body
        if kind is _UNSEEN:
            kind = self._head(msg.headers)[1]
        if kind == "json":
            return self.json_text(msg.body)
        if kind == "form":
            try:
                text = msg.body.decode("latin-1")
            except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
                return msg.body
            return self.query(text).encode("latin-1")
        return msg.body

    # -- records
    def message(self, msg: Message | None) -> Message | None:
        if msg is None:
            return None
        changes: dict[str, Any] = {}
        headers, kind = self._head(msg.headers)
        if headers is not None:
            changes["headers"] = headers
        if isinstance(msg, Request):
            target = self.target(msg.target)
            if target is not msg.target and target != msg.target:
                changes["target"] = target
        body = self.body(msg, kind)
        if body is not msg.body and body != msg.body:
            if msg.body_truncated:
                body = body[: msg.body_len]  # kept bytes never exceed the counted ones
            else:
                changes["body_len"] = len(body)
                if msg.decoded_len is not None:
                    changes["decoded_len"] = len(body)
            changes["body"] = body
        return dataclasses.replace(msg, **changes) if changes else msg

    def exchange(self, ex: Exchange, head: bool = True) -> Exchange:
        """``ex`` with its secrets hashed; ``head=False``: the heads are known to hold no
        candidate name (the capture parser's flag), only bodies are looked at."""
        if not head:
            req, resp = self.bodies(ex.request), self.bodies(ex.response)
        else:
            req, resp = self.message(ex.request), self.message(ex.response)
        if req is ex.request and resp is ex.response:
            return ex
        return dataclasses.replace(ex, request=req, response=resp)  # type: ignore[arg-type]

    def bodies(self, msg: Message | None) -> Message | None:
        """``message`` for a message whose headers are known to hold no secret (the capture
        parser's flag): its target's query and a JSON or form body only. Cheap when neither."""
        if msg is None:
            return None
        if isinstance(msg, Request) and "?" in msg.target:
            return self.message(msg)
        if not msg.body or _content_kind(msg.headers) is None:
            return msg
        return self.message(msg)

    def result(self, res: Result) -> Result:
        """A replay result with the shadow's secrets (Set-Cookie, tokens in bodies) hashed."""
        resp = self.message(res.response)
        return res if resp is res.response else dataclasses.replace(res, response=resp)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- placeholders


def placeholders(req: Request) -> list[str]:
    """Where a request read back from a capture holds redacted values (``header Authorization``,
    ``query api_key``, ``body``): replaying them sends placeholders, not credentials."""
    where = [f"header {n}" for n, v in req.headers if PLACEHOLDER.search(v)]
    if PLACEHOLDER.search(req.target):
        where += [
            f"query {m.group(2)}"
            for m in _FORM_PAIR.finditer(req.target.partition("?")[2])
            if PLACEHOLDER.search(m.group(3))
        ]
    if req.body and PLACEHOLDER.search(req.body.decode("latin-1")):
        where.append("body")
    return where


def substitute(req: Request, values: dict[str, str]) -> Request:
    """``req`` with each redacted value whose header, query parameter, form or JSON field name
    is in ``values`` (lower case) replaced by the given value."""
    if not values:
        return req
    headers = tuple(
        (n, values[n.lower()] if n.lower() in values and PLACEHOLDER.fullmatch(v) else v)
        for n, v in req.headers
    )

    def qsub(m: re.Match[str]) -> str:
        name = m.group(2).lower()
        if name in values and PLACEHOLDER.fullmatch(m.group(3)):
            return f"{m.group(1)}{m.group(2)}={values[name]}"
        return m.group(0)

    path, sep, query = req.target.partition("?")
    target = f"{path}?{_FORM_PAIR.sub(qsub, query)}" if sep else req.target
    body = req.body
    if body and PLACEHOLDER.search(body.decode("latin-1")):
        kind = _content_kind(req.headers)
        if kind == "form":
            body = _FORM_PAIR.sub(qsub, body.decode("latin-1")).encode("latin-1")
        elif kind == "json":

            def jsub(m: re.Match[bytes]) -> bytes:
                name = m.group(1).decode("utf-8", "replace").lower()
                if name in values and PLACEHOLDER.fullmatch(m.group(3).decode("latin-1")):
                    import orjson

                    return b'"%s"%s%s' % (m.group(1), m.group(2), orjson.dumps(values[name]))
                return m.group(0)

            body = _JSON_PAIR.sub(jsub, body)
    if headers == req.headers and target == req.target and body == req.body:
        return req
    return dataclasses.replace(req, headers=headers, target=target, body=body, body_len=len(body))


# ---------------------------------------------------------------------------- reports


def rules() -> SecretRules:
    """The configured rules (cached), for code that shows values rather than stores them."""
    return _configured()


def report_json(value: Any, budget: list[int] | None = None) -> Any:
    """A JSON value for a report: string values of secret names, and secret-shaped strings,
    become ``[redacted]``. Walks at most ``budget[0]`` values (default 10,000; what is beyond
    is left out, for an excerpt only ever shows the beginning)."""
    r = rules()
    budget = budget if budget is not None else [10_000]

    def walk(v: Any, secret: bool) -> Any:
        budget[0] -= 1
        if isinstance(v, str):
            return REPORT_REDACTED if secret or r.is_secret_value(v) else v
        if budget[0] < 0:
            return "..."
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if budget[0] < 0:
                    break
                out[k] = walk(x, r.is_secret_name(str(k)))
            return out
        if isinstance(v, list):
            out_l = []
            for x in v:
                if budget[0] < 0:
                    break
                out_l.append(walk(x, secret))
            return out_l
        return v

    return walk(value, False)


def report_text(text: str) -> str:
    """Free text (a request line, a body excerpt) with ``name=value`` / ``"name": "value"``
    pairs of secret names, and secret-shaped values, shown as ``[redacted]``."""
    r = rules()

    def sub(m: re.Match[str]) -> str:
        value = m.group("v").strip("\"'")
        if (
            value
            and (r.is_secret_name(m.group("n")) or r.is_secret_value(value))
            and not value.isdigit()
        ):
            return m.group("k") + REPORT_REDACTED
        return m.group(0)

    return SECRET_SHAPES.sub(REPORT_REDACTED, _TEXT_PAIR.sub(sub, text))
