<?php
// Waits ?ms= milliseconds before any output: a slow script, for tests of
// timeouts and of how requests queue for php-fpm's workers.
usleep(max((int) ($_GET['ms'] ?? 0), 0) * 1000);
header('Content-Type: text/plain');
echo "slept\n";
