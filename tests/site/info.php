<?php
// The same JSON as /api/info, from a script addressed directly
// (try /info.php/extra/path?x=1 to see PATH_INFO and QUERY_STRING).
require __DIR__ . '/lib/server_info.php';
send_server_info();
