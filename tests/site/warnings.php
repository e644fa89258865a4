<?php
// A PHP warning and an error_log() line, each carrying ?marker=, for the
// tests that count how often a PHP error reaches the proxy's log.
$marker = preg_replace('/[^A-Za-z0-9-]/', '', $_GET['marker'] ?? 'marker');
trigger_error("warning $marker", E_USER_WARNING);
error_log("logged $marker");
header('Content-Type: text/plain');
echo "warned $marker\n";
