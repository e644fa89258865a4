<?php
// A download handed to the web server, as Nextcloud, Drupal's private files
// and Laravel's X-Sendfile do: PHP decides, the server sends the file.
// ?sendfile=/abs/path or ?accel=/uri; ?type= sets (or empties) the type.
header('Content-Disposition: attachment; filename="report.pdf"');
header('Cache-Control: private, max-age=60');
header('X-Content-Type-Options: nosniff');
header('X-Accel-Buffering: no');
if (isset($_GET['type'])) {
    header('Content-Type: ' . $_GET['type']);
}
if (isset($_GET['sendfile'])) {
    header('X-Sendfile: ' . $_GET['sendfile']);
}
if (isset($_GET['accel'])) {
    header('X-Accel-Redirect: ' . $_GET['accel']);
}
echo "the script's own body, which the file replaces\n";
