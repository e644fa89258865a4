<?php
// Sends ?bytes=N bytes (at most 256 MiB) of the alphabet repeated, in chunks
// of ?chunk= bytes (default 8192, at most 1 MiB) each flushed to the web server at once, with
// ?delay= milliseconds between chunks: for tests of large and streamed bodies.
$bytes = min(max((int) ($_GET['bytes'] ?? 0), 0), 256 * 1024 * 1024);
$chunk = min(max((int) ($_GET['chunk'] ?? 8192), 1), 1024 * 1024);
$delay = max((int) ($_GET['delay'] ?? 0), 0);

while (ob_get_level() > 0) {
    ob_end_flush(); // php.ini's output buffer would hold the chunks back.
}
header('Content-Type: application/octet-stream');
// Long enough to cut any chunk from, starting anywhere in the alphabet.
$pattern = str_repeat('abcdefghijklmnopqrstuvwxyz', intdiv($chunk, 26) + 2);
for ($sent = 0; $sent < $bytes; $sent += $length) {
    $length = min($chunk, $bytes - $sent);
    echo substr($pattern, $sent % 26, $length);
    flush();
    if ($delay > 0 && $sent + $length < $bytes) {
        usleep($delay * 1000);
    }
}
