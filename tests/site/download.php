<?php
// A download as frameworks send one: a Content-Length, an ETag, and a 304
// without a body when the client already has this version.
$body = "file\n";
$etag = '"v1"';
header('Content-Type: text/plain');
header('ETag: ' . $etag);
header('Content-Length: ' . strlen($body));
if (($_SERVER['HTTP_IF_NONE_MATCH'] ?? '') === $etag) {
    http_response_code(304);
    exit;
}
if (($_GET['status'] ?? '') === '204') {
    http_response_code(204);
}
echo $body;
