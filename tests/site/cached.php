<?php
// A page whose every run is told apart by a fresh id, with the caching
// headers its query asks for: ?cc= Cache-Control (default public,
// max-age=60), ?expires=SECONDS an Expires, ?vary= a Vary, ?cookie=1 a
// Set-Cookie, ?sleep= milliseconds of work, ?bytes= padding.
if (isset($_GET['sleep'])) {
    usleep((int) $_GET['sleep'] * 1000);
}
if (isset($_GET['expires'])) {
    header('Date: ' . gmdate('D, d M Y H:i:s', time()) . ' GMT');
    header('Expires: ' . gmdate('D, d M Y H:i:s', time() + (int) $_GET['expires']) . ' GMT');
} else {
    header('Cache-Control: ' . ($_GET['cc'] ?? 'public, max-age=60'));
}
if (isset($_GET['vary'])) {
    header('Vary: ' . $_GET['vary']);
}
if (isset($_GET['cookie'])) {
    setcookie('session', 'abc');
}
header('Content-Type: text/plain');
$id = uniqid('', true);
echo "run $id for ", $_SERVER['HTTP_ACCEPT_LANGUAGE'] ?? '-', "\n";
echo str_repeat('x', (int) ($_GET['bytes'] ?? 0));
