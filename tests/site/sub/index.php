<?php
// The directory index of /sub/: requested as /sub/ it shows which script ran.
header('Content-Type: application/json');
echo json_encode(['marker' => 'sub index', 'SCRIPT_NAME' => $_SERVER['SCRIPT_NAME']], JSON_UNESCAPED_SLASHES), "\n";
