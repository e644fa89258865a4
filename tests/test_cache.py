"""
The PHP response cache (C{--cache-size}): what HTTP's rules let it keep,
what it never answers, simultaneous misses run once, stale copies when PHP
is down, purging and its bound. Through each front in a process of its own
(the command's, C{twist fastcgi-proxy --cache-size 1M --cache-status}) in
front of a real php-fpm running C{tests/site/cached.php}, which prints a
fresh id on every run; then the rules on their own.

Each test asks for URLs of its own: they are the cache's keys.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PHPFPMFactory, stopPHPFPM
from tests.fronts import RunningFronts, SiteOptions, siteFronts
from tests.processes import Proxy, rawRequest
from txfastcgi._http.cache import ResponseCache, lifetimes

CACHED = SiteOptions(
    arguments=["--cache-size", "1M", "--cache-status"],
    resource={"cacheSize": 1024 * 1024, "cacheStatus": True},
)


@pytest.fixture(scope="module")
def fronts(php_fpm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFronts]:
    with siteFronts(php_fpm, tmp_path_factory.mktemp("cache"), CACHED) as running:
        yield running


@pytest.fixture
def proxy(fronts: RunningFronts, front: str) -> Proxy:
    return fronts[front]


def page(query: str = "") -> str:
    """A URL of cached.php no other test asks for."""
    return f"/cached.php?t={uuid.uuid4().hex}" + (f"&{query}" if query else "")


def get(
    proxy: Proxy, target: str, method: str = "GET", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    answer = rawRequest(proxy, method, target, **headers)
    body = answer.read()
    return answer.status, {k.lower(): v for k, v in answer.getheaders()}, body


def test_a_cacheable_page_runs_once_and_is_answered_from_the_cache(proxy: Proxy) -> None:
    target = page()
    _, first, body = get(proxy, target)
    _, second, again = get(proxy, target)
    assert (first["x-cache"], second["x-cache"]) == ("MISS", "HIT")
    assert again == body
    assert int(second["age"]) >= 0
    assert second["cache-control"] == "public, max-age=60"


def test_expires_gives_a_lifetime_too(proxy: Proxy) -> None:
    target = page("expires=60")
    assert get(proxy, target)[2] == get(proxy, target)[2]


@pytest.mark.parametrize(
    "query",
    [
        "cc=private,%20max-age=60",
        "cc=no-store",
        "cc=no-cache",
        "cookie=1",
        "cc=public",
        "cc=max-age=0",
    ],
)
def test_what_the_response_does_not_allow_is_never_kept(proxy: Proxy, query: str) -> None:
    target = page(query)
    assert get(proxy, target)[2] != get(proxy, target)[2]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Basic YTpi"},
        {"Cookie": "wordpress_logged_in_abc=admin"},
        {"Cookie": "a=1; comment_author_xyz=Ada"},
    ],
)
def test_a_logged_in_or_authorized_request_goes_past_the_cache(
    proxy: Proxy, headers: dict[str, str]
) -> None:
    target = page()
    cached = get(proxy, target)[2]
    status, answer, body = get(proxy, target, **headers)
    assert (status, answer["x-cache"]) == (200, "BYPASS")
    assert body != cached
    assert get(proxy, target)[2] == cached  # Nor does it replace what is kept.


def test_no_cache_from_the_client_runs_php_and_refreshes_the_copy(proxy: Proxy) -> None:
    target = page()
    first = get(proxy, target)[2]
    fresh = get(proxy, target, **{"Cache-Control": "no-cache"})[2]
    assert fresh != first
    assert get(proxy, target)[2] == fresh


def test_vary_keeps_a_copy_per_value(proxy: Proxy) -> None:
    target = page("vary=Accept-Language")
    english = get(proxy, target, **{"Accept-Language": "en"})[2]
    french = get(proxy, target, **{"Accept-Language": "fr"})[2]
    assert english.endswith(b" for en\n") and french.endswith(b" for fr\n")
    assert get(proxy, target, **{"Accept-Language": "en"})[2] == english
    assert get(proxy, target, **{"Accept-Language": "fr"})[2] == french


def test_head_is_answered_from_a_stored_get(proxy: Proxy) -> None:
    target = page()
    get(proxy, target)
    status, headers, body = get(proxy, target, "HEAD")
    assert (status, headers["x-cache"], body) == (200, "HIT", b"")


def test_simultaneous_misses_run_php_once(proxy: Proxy) -> None:
    """Six at once: one run's id in every answer, one MISS and five HITs."""
    target = page("sleep=500")
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: get(proxy, target), range(6)))
    assert {body for _, _, body in answers} == {answers[0][2]}
    assert sorted(headers["x-cache"] for _, headers, _ in answers) == ["HIT"] * 5 + ["MISS"]


def test_a_stale_copy_is_served_while_it_is_refreshed(proxy: Proxy) -> None:
    target = page("cc=max-age=1,%20stale-while-revalidate=30")
    first = get(proxy, target)[2]
    time.sleep(1.2)
    status, headers, stale = get(proxy, target)
    assert (status, headers["x-cache"], stale) == (200, "STALE", first)
    time.sleep(0.5)  # The refresh, in the background.
    status, headers, refreshed = get(proxy, target)
    assert (headers["x-cache"], refreshed != first) == ("HIT", True)


def test_purge_drops_a_url(proxy: Proxy) -> None:
    target = page()
    first = get(proxy, target)[2]
    assert get(proxy, target, "PURGE")[0] == 200
    assert get(proxy, target, "PURGE")[0] == 404
    assert get(proxy, target)[2] != first


def test_the_cache_keeps_no_more_than_its_size(proxy: Proxy) -> None:
    """1 MiB: twelve pages of 100 KB do not all fit, and the oldest goes."""
    targets = [page("bytes=100000") for _ in range(12)]
    firsts = [get(proxy, target)[2] for target in targets]
    assert get(proxy, targets[-1])[2] == firsts[-1]
    assert get(proxy, targets[0])[2] != firsts[0]


def test_a_stale_copy_is_served_when_php_fpm_is_down(
    php_fpm_factory: PHPFPMFactory, php_fpm: Any, tmp_path: Path
) -> None:
    pool = php_fpm_factory(children=1)
    with RunningFronts(
        pool.endpointDescription, str(php_fpm.documentRoot), tmp_path, CACHED
    ) as running:
        target = page("cc=max-age=1,%20stale-if-error=60")
        gone = page("cc=max-age=1")
        answers = {front: get(running[front], target)[2] for front in ("http1", "twisted.web")}
        for front in answers:
            get(running[front], gone)
        stopPHPFPM(pool)
        time.sleep(1.2)
        for front, first in answers.items():
            status, headers, body = get(running[front], target)
            assert (status, headers["x-cache"], body) == (200, "STALE", first)
            assert get(running[front], gone)[0] == 502


def test_without_cache_size_nothing_is_kept(php_fpm: Any, tmp_path: Path) -> None:
    with siteFronts(php_fpm, tmp_path) as running:
        for front in ("http1", "twisted.web"):
            target = page()
            _, headers, body = get(running[front], target)
            assert "x-cache" not in headers and get(running[front], target)[2] != body


# The rules alone


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ([(b"Cache-Control", b"max-age=60")], (60.0, 0.0, 0.0)),
        ([(b"Cache-Control", b"max-age=60, s-maxage=10")], (10.0, 0.0, 0.0)),
        ([(b"Cache-Control", b'max-age="30", stale-if-error=5')], (30.0, 0.0, 5.0)),
        ([(b"Cache-Control", b"max-age=60"), (b"Set-Cookie", b"a=b")], None),
        ([(b"Cache-Control", b"max-age=60"), (b"Vary", b"*")], None),
        ([(b"Cache-Control", b"max-age=abc")], None),
        ([], None),
    ],
)
def test_lifetimes(headers: list[tuple[bytes, bytes]], allowed: Any) -> None:
    assert lifetimes(200, headers) == allowed


def test_a_status_that_may_not_be_cached_is_not() -> None:
    assert lifetimes(500, [(b"Cache-Control", b"max-age=60")]) is None
    assert lifetimes(404, [(b"Cache-Control", b"max-age=60")]) == (60.0, 0.0, 0.0)


def test_a_response_over_an_eighth_of_the_cache_streams_by_unkept(proxy: Proxy) -> None:
    target = page("bytes=200000")
    assert get(proxy, target)[2] != get(proxy, target)[2]


def test_a_response_too_large_for_an_entry_is_not_kept() -> None:
    cache = ResponseCache(1000, maxEntrySize=100)
    key = (b"http", b"h", b"/")
    recording = cache.record(key, [], 200, b"OK", [(b"Cache-Control", b"max-age=9")], 0.0)
    assert recording is not None
    assert cache.add(recording, b"x" * 100)
    assert not cache.add(recording, b"x")


def test_the_bypass_cookies_are_configurable() -> None:
    cache = ResponseCache(1000, bypassCookies=["SESS*"])
    assert cache.bypasses(b"GET", [(b"Cookie", b"SESSabc=1")])
    assert not cache.bypasses(b"GET", [(b"Cookie", b"wordpress_logged_in_x=1")])
    assert cache.bypasses(b"POST", [])


def test_replacing_evicting_and_purging_leave_nothing_behind() -> None:
    """A variant replaced is found again; evicted or purged ones leave no bytes counted."""
    cache = ResponseCache(3000, maxEntrySize=1000)
    headers = [(b"Cache-Control", b"max-age=9"), (b"Vary", b"Accept-Language")]

    def store(target: bytes, language: bytes, body: bytes) -> None:
        key = (b"http", b"h", target)
        recording = cache.record(key, [(b"Accept-Language", language)], 200, b"OK", headers, 0.0)
        assert recording is not None and cache.add(recording, body)
        cache.store(recording)

    def found(target: bytes, language: bytes) -> bytes | None:
        stored = cache.lookup((b"http", b"h", target), [(b"Accept-Language", language)])
        return None if stored is None else stored.body

    store(b"/a", b"en", b"1" * 500)
    store(b"/a", b"en", b"2" * 500)
    store(b"/a", b"fr", b"3" * 500)
    assert (found(b"/a", b"en"), found(b"/a", b"fr")) == (b"2" * 500, b"3" * 500)
    store(b"/b", b"en", b"4" * 900)
    store(b"/c", b"en", b"5" * 900)
    # Both of /a's variants, least recently used, made room for /c.
    assert (found(b"/a", b"en"), found(b"/a", b"fr")) == (None, None)
    assert found(b"/c", b"en") == b"5" * 900
    assert cache.purge((b"http", b"h", b"/a")) == 0
    assert cache.purge((b"http", b"h", b"/b")) + cache.purge((b"http", b"h", b"/c")) == 2
    assert (len(cache), cache.size) == (0, 0)
