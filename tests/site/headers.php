<?php
// Two Set-Cookie headers and a custom one: a proxy must keep repeated headers.
setcookie('first', 'one');
setcookie('second', 'two', ['path' => '/', 'httponly' => true]);
header('X-Txfastcgi-Demo: custom header');
// A preload hint, which HTTP/2 front-ends once turned into server push.
header('Link: </style.css>; rel=preload; as=style');
header('Content-Type: text/plain');
echo "two cookies and a custom header\n";
