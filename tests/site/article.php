<?php
// A blog-like page of ?paragraphs= paragraphs (default 100: some 25 KB), for
// the compression tests: ?type= sets its Content-Type, ?cache= its
// Cache-Control, ?encoding= a Content-Encoding of its own, ?etag= an ETag,
// ?status= its status; ?pause= milliseconds to wait after the first
// paragraph, which is flushed first. Otherwise PHP's output buffer sends it
// in pieces of a few KB, as any page.
header('Content-Type: ' . ($_GET['type'] ?? 'text/html; charset=utf-8'));
foreach (['cache' => 'Cache-Control', 'encoding' => 'Content-Encoding', 'etag' => 'ETag'] as $key => $name) {
    if (isset($_GET[$key])) {
        header($name . ': ' . $_GET[$key]);
    }
}
if (isset($_GET['status'])) {
    http_response_code((int) $_GET['status']);
}
$paragraphs = max((int) ($_GET['paragraphs'] ?? 100), 1);
for ($n = 1; $n <= $paragraphs; $n++) {
    echo "<p id=\"p$n\">Paragraph $n of the article: the quick brown fox jumps over the lazy dog, ";
    echo "and the web server compresses what PHP writes without changing a byte of it.</p>\n";
    if ($n == 1 && isset($_GET['pause'])) {
        while (ob_get_level() > 0) {
            ob_end_flush();
        }
        flush();
        usleep((int) $_GET['pause'] * 1000);
    }
}
