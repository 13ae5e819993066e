"""Endpoints: METHOD + a path template with its parameters found automatically.

``GET /users/123/orders/9f86d081884c7d65`` -> ``GET /users/{id}/orders/{id}``. A segment is a
parameter when it is a number, a UUID, a hex id, a long random-looking token, or when its position
(under the same method and template prefix) has shown more than ``max_distinct`` distinct values
(``/users/alice``, ``/users/bob``, ... -> ``/users/{id}``). User rules override all of that.

The learning of high-cardinality positions is incremental (the live mirror feeds exchanges one by
one), so a key given out early may later fold into a template: ``retemplate`` maps an old key to
its current template, and the aggregator merges their aggregates. Memory: O(positions x
max_distinct) strings plus a bounded cache of raw paths.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from shadowtap.compare.config import EndpointConfig
from shadowtap.compare.shapes import is_id_like

PARAM = "{id}"

_CACHE_MAX = 100_000
_POSITIONS_MAX = 20_000  # path positions whose literal values are being counted


def split_path(target: str) -> str:
    """The path of a request target (origin-form or absolute-form), without the query."""
    if target.startswith(("http://", "https://")):
        target = urlsplit(target).path or "/"
    path = target.split("?", 1)[0].split("#", 1)[0]
    return path or "/"


class Templater:
    """Maps (method, target) to an endpoint name. Not thread-safe: the aggregator serialises."""

    def __init__(self, config: EndpointConfig | None = None) -> None:
        self._config = config or EndpointConfig()
        self._rules = [(r.method.upper(), r.compile(), r.template) for r in self._config.rules]
        # (method, prefix template, depth) -> distinct literal values seen (capped)
        self._seen: dict[tuple[str, str], set[str]] = {}
        self._variable: set[tuple[str, str]] = set()
        self._cache: dict[tuple[str, str], str] = {}

    def endpoint(self, method: str, target: str) -> str:
        key = (method, target)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        path = split_path(target)
        name = self._rule(method, path) or f"{method} {self._template(method, path, learn=True)}"
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = name
        return name

    def retemplate(self, name: str) -> str:
        """The current template of an endpoint name given out earlier (positions learnt to be
        variable since then fold)."""
        method, _, path = name.partition(" ")
        if self._rule(method, path):
            return name
        return f"{method} {self._template(method, path, learn=False)}"

    def merge(self, other: Templater) -> None:
        """Learn what ``other`` learnt: positions variable in either are variable; literal values
        seen at one position are united (a position past ``max_distinct`` becomes variable)."""
        self._variable |= other._variable
        for pos, seen in other._seen.items():
            if pos in self._variable:
                continue
            mine = self._seen.setdefault(pos, set())
            mine |= seen
            if len(mine) > self._config.max_distinct:
                self._variable.add(pos)
                del self._seen[pos]
        for pos in self._variable.intersection(self._seen):
            del self._seen[pos]
        self._cache.clear()

    def _rule(self, method: str, path: str) -> str | None:
        for rmethod, pattern, template in self._rules:
            if (not rmethod or rmethod == method) and pattern.fullmatch(path):
                return f"{method} {template}"
        return None

    def _template(self, method: str, path: str, *, learn: bool) -> str:
        segments = path.split("/")
        out: list[str] = []
        for seg in segments:
            prefix = "/".join(out)
            if seg == "" or seg == PARAM:
                out.append(seg)
                continue
            if is_id_like(seg):
                out.append(PARAM)
                continue
            pos = (method, prefix)
            if pos in self._variable:
                out.append(PARAM)
                continue
            if learn:
                seen = self._seen.get(pos)
                if seen is None:
                    if len(self._seen) >= _POSITIONS_MAX:  # adversarial paths: stop learning
                        self._variable.add(pos)
                        out.append(PARAM)
                        continue
                    seen = self._seen[pos] = set()
                if seg not in seen:
                    seen.add(seg)
                    if len(seen) > self._config.max_distinct:
                        self._variable.add(pos)
                        del self._seen[pos]
                        self._cache.clear()
                        out.append(PARAM)
                        continue
            out.append(seg)
        return "/".join(out) or "/"
