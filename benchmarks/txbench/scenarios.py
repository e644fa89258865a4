"""The loads of the issue's targets and the document root they need."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
# Seconds of tiny-c32 load on each front-end before the rounds (Jetty: --jetty-warm-up).
WARM_UP = 2.0
HELLO = b"Hello, world!\n"
POST_SIZE = MIB
# WordPress's wp-includes/css/dist/block-library/style.min.css is 95 KB; there
# is no WordPress here, so a CSS-like file of that size stands in for it.
CSS_SIZE = 97_000
SMALL_FILE = b"static file\n"
# A blog-like HTML page of PHP's, for the cost of compressing it.
PAGE_PARAGRAPHS = 120
PAGE_WORDS = (
    "of the post: the quick brown fox jumps over the lazy dog,"
    " and the server compresses what PHP writes."
)
PAGE_SIZE = sum(len(f"<p>Paragraph {n} {PAGE_WORDS}</p>\n") for n in range(PAGE_PARAGRAPHS))
COMPRESSING = "gzip, deflate, br, zstd"
"""The Accept-Encoding a browser (Chromium) sends."""
LARGE_FILE_SIZE = MIB


@dataclass(frozen=True)
class Scenario:
    """One load: a path, a concurrency, and how the response is checked first."""

    name: str
    path: str
    connections: int
    description: str
    expectBytes: int
    post: bool = False
    http2: bool = False
    quick: bool = False
    # A file served by the front-end itself, not by PHP.
    static: bool = False
    # The Accept-Encoding the load sends, if any (the check before it sends none).
    acceptEncoding: str | None = None

    @property
    def tiny(self) -> bool:
        return self.path == "/hello.php"


SCENARIOS = (
    Scenario("tiny-c1", "/hello.php", 1, "14 B PHP response, 1 connection", len(HELLO)),
    Scenario(
        "tiny-c32", "/hello.php", 32, "14 B PHP response, 32 connections", len(HELLO), quick=True
    ),
    Scenario("tiny-c256", "/hello.php", 256, "14 B PHP response, 256 connections", len(HELLO)),
    Scenario("1m-c32", "/1m.php", 32, "1 MiB PHP response, 32 connections", MIB, quick=True),
    Scenario(
        "post1m-c32",
        "/post.php",
        32,
        "1 MiB POST body read by PHP, 32 connections",
        len(str(POST_SIZE)) + 1,
        post=True,
        quick=True,
    ),
    Scenario(
        "css95k-c32",
        "/style.min.css",
        32,
        "95 KB static CSS file (as WordPress's block-library style.min.css), 32 connections",
        CSS_SIZE,
        static=True,
        quick=True,
    ),
    Scenario(
        "static12-c32",
        "/static.txt",
        32,
        "12-byte static file, 32 connections",
        len(SMALL_FILE),
        static=True,
    ),
    Scenario(
        "static1m-c32",
        "/static-1m.bin",
        32,
        "1 MiB static file, 32 connections",
        LARGE_FILE_SIZE,
        static=True,
    ),
    Scenario(
        "page-c32",
        "/page.php",
        32,
        f"{PAGE_SIZE} B PHP HTML page, no Accept-Encoding, 32 connections",
        PAGE_SIZE,
    ),
    Scenario(
        "page-compressed-c32",
        "/page.php",
        32,
        f"the same page to clients that send Accept-Encoding: {COMPRESSING}, 32 connections",
        PAGE_SIZE,
        acceptEncoding=COMPRESSING,
    ),
    Scenario(
        "cacheable-c32",
        "/cacheable.php",
        32,
        "14 B PHP response that allows caching (Cache-Control: public, max-age=60),"
        " 32 connections: run with --proxy-arg=--cache-size=64M for the cache",
        len(HELLO),
    ),
    Scenario(
        "h2-tiny-c32",
        "/hello.php",
        32,
        "14 B PHP response over HTTP/2 + TLS (h2load -m16), 32 connections",
        len(HELLO),
        http2=True,
    ),
)

PHP_FILES = {
    "hello.php": '<?php echo "Hello, world!\\n";\n',
    "1m.php": "<?php header('Content-Type: application/octet-stream'); "
    "echo str_repeat('x', 1048576);\n",
    "post.php": "<?php header('Content-Type: text/plain'); $in = fopen('php://input', 'rb'); "
    '$n = 0; while (!feof($in)) { $n += strlen(fread($in, 65536)); } echo $n, "\\n";\n',
    "index.php": '<?php echo "index ", $_SERVER["REQUEST_URI"], "\\n";\n',
    "cacheable.php": "<?php header('Cache-Control: public, max-age=60');"
    ' echo "Hello, world!\\n";\n',
    "page.php": "<?php header('Content-Type: text/html; charset=utf-8');"
    f" for ($n = 0; $n < {PAGE_PARAGRAPHS}; $n++) {{"
    f" echo '<p>Paragraph ', $n, ' {PAGE_WORDS}</p>', \"\\n\"; }}\n",
}

POST_LUA = f"""-- 1 MiB POST body for wrk, built once: wrk then reuses the request bytes.
wrk.method = "POST"
wrk.body = string.rep("x", {POST_SIZE})
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def styleSheet(size: int) -> bytes:
    """
    Minified-CSS-like bytes of exactly C{size}: rules of varied selectors and
    declarations on one line, as a minifier leaves them, so a front-end that
    compresses or caches sees text like a real style sheet's.
    """
    rules = []
    length = 0
    index = 0
    while length < size:
        rule = (
            f".wp-block-{index % 97}-{index}"
            f"{{margin:{index % 7}px {index % 5}em;color:#{index * 2654435761 % 0xFFFFFF:06x};"
            f"display:{('flex', 'block', 'grid')[index % 3]}}}"
        )
        rules.append(rule)
        length += len(rule)
        index += 1
    return "".join(rules).encode()[: size - 1] + b"\n"


def writeDocumentRoot(root: Path) -> None:
    """
    The PHP and static files every front-end serves. World-readable, since
    php-fpm workers run as www-data and the temporary directory is root's.
    """
    root.mkdir(mode=0o755)
    for name, source in PHP_FILES.items():
        (root / name).write_text(source)
    (root / "style.min.css").write_bytes(styleSheet(CSS_SIZE))
    (root / "static.txt").write_bytes(SMALL_FILE)
    (root / "static-1m.bin").write_bytes(bytes(range(256)) * (LARGE_FILE_SIZE // 256))
    for path in root.iterdir():
        path.chmod(0o644)
