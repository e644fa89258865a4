<?php
// Writes ?message= (default "hello from stderr.php") to both places PHP's
// output can go besides the response.
$message = str_replace(["\r", "\n"], ' ', $_GET['message'] ?? 'hello from stderr.php');

// To the web server, as a FastCGI STDERR record ("PHP message: ..."): the
// proxy logs it.  (php-fpm has no STDERR constant: that is PHP's CLI.)
error_log($message);

// To the worker's own standard error, which php-fpm's catch_workers_output
// copies to php-fpm's log: the web server never sees it.
file_put_contents('php://stderr', "$message\n");

header('Content-Type: text/plain');
echo "wrote to stderr: $message\n";
