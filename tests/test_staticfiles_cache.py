"""
The small-file cache: what it keeps, and that no change of a file, however
small, is ever answered from memory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from txfastcgi._http.staticfiles import ByteRange, CachedFile, SmallFileCache


def aMinuteLater() -> float:
    """A clock for which every file in the test is long settled."""
    return time.time() + 60


@pytest.fixture
def cache() -> SmallFileCache:
    return SmallFileCache(maxFileSize=100, maxBytes=300, clock=aMinuteLater)


def write(path: Path, content: bytes, mtimeNs: int | None = None) -> str:
    path.write_bytes(content)
    if mtimeNs is not None:
        os.utime(path, ns=(mtimeNs, mtimeNs))
    return str(path)


def cached(cache: SmallFileCache, path: str) -> CachedFile:
    result = cache.get(path)
    assert result is not None
    return result


def body(cache: SmallFileCache, path: str) -> bytes:
    return cached(cache, path).body


def test_an_unchanged_file_is_served_from_memory(cache: SmallFileCache, tmp_path: Path) -> None:
    path = write(tmp_path / "a.css", b"body{}")
    first = cached(cache, path)
    assert (first.body, first.facts.size, first.facts.contentType) == (b"body{}", 6, b"text/css")
    assert cache.get(path) is first
    assert (len(cache), cache.cachedBytes) == (1, 6)


def test_a_new_size_is_seen(cache: SmallFileCache, tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", b"one", mtimeNs=10**18)
    assert body(cache, path) == b"one"
    write(tmp_path / "a.txt", b"three", mtimeNs=10**18)
    changed = cached(cache, path)
    assert (changed.body, changed.facts.size) == (b"three", 5)
    assert cache.cachedBytes == 5


def test_a_new_mtime_is_seen(cache: SmallFileCache, tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", b"one", mtimeNs=10**18)
    etag = cached(cache, path).facts.etag
    write(tmp_path / "a.txt", b"two", mtimeNs=10**18 + 1)
    changed = cached(cache, path)
    assert changed.body == b"two"
    assert changed.facts.etag != etag


def test_a_rewrite_that_keeps_size_and_mtime_is_seen(cache: SmallFileCache, tmp_path: Path) -> None:
    """As `cp -p` or `rsync -t` leave it: the ctime tells."""
    path = write(tmp_path / "a.txt", b"one", mtimeNs=10**18)
    assert body(cache, path) == b"one"
    # The kernel sets the ctime from its own coarse clock (a tick of up to
    # 10 ms): no fake clock can move it.
    time.sleep(0.01)
    write(tmp_path / "a.txt", b"two", mtimeNs=10**18)
    assert body(cache, path) == b"two"


def test_a_file_replaced_by_rename_is_seen(cache: SmallFileCache, tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", b"one", mtimeNs=10**18)
    assert body(cache, path) == b"one"
    os.replace(write(tmp_path / "new.txt", b"two", mtimeNs=10**18), path)
    assert body(cache, path) == b"two"


def test_a_deleted_file_is_forgotten(cache: SmallFileCache, tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", b"one")
    assert body(cache, path) == b"one"
    os.remove(path)
    with pytest.raises(FileNotFoundError):
        cache.get(path)
    assert (len(cache), cache.cachedBytes) == (0, 0)
    write(tmp_path / "a.txt", b"back")
    assert body(cache, path) == b"back"


def test_a_file_just_written_is_served_but_not_kept(tmp_path: Path) -> None:
    """Its next change may fall in the same tick of the filesystem's clock."""
    cache = SmallFileCache(maxFileSize=100, maxBytes=300)
    path = write(tmp_path / "a.txt", b"fresh")
    assert body(cache, path) == b"fresh"
    assert len(cache) == 0


def test_large_files_are_left_to_the_sender(cache: SmallFileCache, tmp_path: Path) -> None:
    assert cache.get(write(tmp_path / "big", b"x" * 101)) is None
    assert body(cache, write(tmp_path / "limit", b"x" * 100)) == b"x" * 100
    assert len(cache) == 1


def test_wordpress_s_style_sheet_is_kept_by_default(tmp_path: Path) -> None:
    # block-library/style.min.css, 95 KB: from memory it costs far less
    # than by sendfile (see SmallFileCache).
    path = write(tmp_path / "style.min.css", b"x" * 97_000)
    cache = SmallFileCache(clock=aMinuteLater)
    assert body(cache, path) == b"x" * 97_000
    assert len(cache) == 1


def test_a_directory_is_not_cached(cache: SmallFileCache, tmp_path: Path) -> None:
    assert cache.get(str(tmp_path)) is None


def test_the_least_recently_used_file_goes_first(cache: SmallFileCache, tmp_path: Path) -> None:
    paths = [write(tmp_path / name, name.encode() * 100) for name in "abcd"]
    a, b, c, d = paths
    kept = {path: cache.get(path) for path in (a, b, c)}
    assert cache.get(a) is kept[a]
    cache.get(d)
    assert (len(cache), cache.cachedBytes) == (3, 300)
    assert cache.get(a) is kept[a]
    assert cache.get(c) is kept[c]
    assert cache.get(b) is not kept[b]


def test_a_range_of_a_cached_file(cache: SmallFileCache, tmp_path: Path) -> None:
    digits = cached(cache, write(tmp_path / "a.txt", b"0123456789"))
    assert digits.content(ByteRange(0, 10)) is digits.body
    assert bytes(digits.content(ByteRange(2, 3))) == b"234"
    assert bytes(digits.content(ByteRange(9, 1))) == b"9"


def test_a_file_limit_above_the_total_is_refused() -> None:
    with pytest.raises(ValueError, match="maxFileSize"):
        SmallFileCache(maxFileSize=2, maxBytes=1)
