<?php
// Answers with the status in ?code= (default 200), set the CGI way with a
// Status header; ?reason= adds a reason phrase, which PHP does not add itself.
$code = filter_var($_GET['code'] ?? 200, FILTER_VALIDATE_INT, ['options' => ['min_range' => 100, 'max_range' => 999]]);
if ($code === false) {
    $code = 400;
}
$reason = str_replace(["\r", "\n"], '', $_GET['reason'] ?? '');
header(rtrim("Status: $code $reason"));
header('Content-Type: text/plain');
echo "status $code\n";
