<?php
// The front controller: the proxy sends it every request that names no file,
// and it routes on the path of the URL ("pretty URLs").
declare(strict_types=1);

require __DIR__ . '/lib/server_info.php';

// Where the site is mounted ("" at the root, "/demo" under a prefix), so that
// routes and links work either way.
$base = rtrim(dirname($_SERVER['SCRIPT_NAME']), '/\\');
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH) ?: '/';
foreach ([$_SERVER['SCRIPT_NAME'], $base] as $prefix) {
    if ($prefix !== '' && ($path === $prefix || str_starts_with($path, "$prefix/"))) {
        $path = substr($path, strlen($prefix)) ?: '/';
        break;
    }
}

function h(string $text): string
{
    return htmlspecialchars($text, ENT_QUOTES | ENT_SUBSTITUTE, 'UTF-8');
}

/** Sends an HTML page; $body is HTML already. */
function page(string $title, string $body): void
{
    global $base;
    header('Content-Type: text/html; charset=utf-8');
    $b = h($base);
    echo <<<HTML
    <!DOCTYPE html>
    <html lang="en">
    <head>
    <meta charset="utf-8">
    <title>{$title}</title>
    <link rel="stylesheet" href="{$b}/style.css">
    </head>
    <body>
    <header><a href="{$b}/"><img src="{$b}/logo.svg" alt="txfastcgi"></a></header>
    <h1>{$title}</h1>
    {$body}
    </body>
    </html>

    HTML;
}

$method = $_SERVER['REQUEST_METHOD'];
$b = h($base);

if ($path === '/') {
    page('txfastcgi demo', <<<HTML
    <p>A PHP application served by php-fpm through txfastcgi.</p>
    <ul>
    <li><a href="{$b}/hello/world">/hello/world</a>: a pretty URL with a parameter</li>
    <li><a href="{$b}/form">/form</a>: a form posted back</li>
    <li><a href="{$b}/session">/session</a>: a counter kept in a session</li>
    <li><a href="{$b}/redirect">/redirect</a>: a redirect</li>
    <li><a href="{$b}/upload">/upload</a>: a file upload</li>
    <li><a href="{$b}/api/info">/api/info</a>: the request as PHP sees it, in JSON</li>
    <li><a href="{$b}/info.php/extra/path?x=1">/info.php/extra/path</a>: the same from a script, with PATH_INFO</li>
    <li><a href="{$b}/sub/">/sub/</a>: a directory index</li>
    <li><a href="{$b}/status.php?code=418">/status.php</a>, <a href="{$b}/stream.php?bytes=100000">/stream.php</a>,
        <a href="{$b}/stderr.php">/stderr.php</a>, <a href="{$b}/headers.php">/headers.php</a>: scripts for tests</li>
    <li><a href="{$b}/style.css">/style.css</a>, <a href="{$b}/logo.svg">/logo.svg</a>: static files</li>
    <li><a href="{$b}/nowhere">/nowhere</a>: not found</li>
    </ul>
    HTML);
} elseif (preg_match('#^/hello/([^/]+)$#', $path, $match)) {
    $name = h(rawurldecode($match[1]));
    page('Hello', "<p id=\"greeting\">Hello, {$name}!</p>");
} elseif ($path === '/form' && $method === 'POST') {
    $fields = '';
    foreach ($_POST as $name => $value) {
        $shown = is_string($value) ? $value : json_encode($value); // name[]=... gives arrays
        $fields .= '<dt>' . h((string) $name) . '</dt><dd>' . h($shown) . "</dd>\n";
    }
    page('Form received', "<dl id=\"fields\">\n{$fields}</dl>\n<p><a href=\"{$b}/form\">Again</a></p>");
} elseif ($path === '/form') {
    page('Form', <<<HTML
    <form method="post" action="{$b}/form">
    <p><label>Name <input name="name"></label></p>
    <p><label>Message <textarea name="message"></textarea></label></p>
    <p><button>Send</button></p>
    </form>
    HTML);
} elseif ($path === '/session') {
    session_start();
    $_SESSION['count'] = ($_SESSION['count'] ?? 0) + 1;
    page('Session', "<p>Visits in this session: <strong id=\"count\">{$_SESSION['count']}</strong></p>");
} elseif ($path === '/redirect') {
    // PHP turns the status into 302 Found when a Location header is sent.
    header("Location: {$base}/hello/redirected");
    page('Redirect', "<p><a href=\"{$b}/hello/redirected\">Go on</a></p>");
} elseif ($path === '/upload' && $method === 'POST') {
    $file = $_FILES['file'] ?? null;
    if ($file === null || is_array($file['error']) || $file['error'] !== UPLOAD_ERR_OK) {
        // No file at all when the body went over post_max_size.
        http_response_code(400);
        $error = $file === null ? 'no file received' : 'upload failed (error ' . h(json_encode($file['error'])) . ')';
        page('Upload failed', "<p class=\"error\">{$error}</p>");
    } else {
        $name = h($file['name']);
        $sha256 = hash_file('sha256', $file['tmp_name']);
        page('Upload received', <<<HTML
        <dl>
        <dt>Name</dt><dd id="name">{$name}</dd>
        <dt>Size</dt><dd id="size">{$file['size']}</dd>
        <dt>SHA-256</dt><dd id="sha256">{$sha256}</dd>
        </dl>
        HTML);
    }
} elseif ($path === '/upload') {
    page('Upload', <<<HTML
    <form method="post" action="{$b}/upload" enctype="multipart/form-data">
    <p><label>File (up to 16 MB) <input type="file" name="file"></label></p>
    <p><button>Upload</button></p>
    </form>
    HTML);
} elseif ($path === '/api/info') {
    send_server_info();
} else {
    http_response_code(404);
    page('Not found', '<p>Nothing here: <code>' . h($path) . "</code></p>\n<p><a href=\"{$b}/\">Home</a></p>");
}
