<?php
// The request as PHP saw it, shared by index.php (/api/info) and info.php.
// Tests compare it with what the FastCGI client should have sent; users can
// read it to see what their PHP application gets.
declare(strict_types=1);

/** The CGI variables a FastCGI client is expected to set (null: not sent). */
const CGI_VARIABLES = [
    'REQUEST_METHOD', 'REQUEST_URI', 'SCRIPT_NAME', 'SCRIPT_FILENAME',
    'PATH_INFO', 'QUERY_STRING', 'DOCUMENT_ROOT', 'DOCUMENT_URI',
    'CONTENT_TYPE', 'CONTENT_LENGTH', 'SERVER_PROTOCOL', 'REQUEST_SCHEME',
    'HTTPS', 'GATEWAY_INTERFACE', 'SERVER_SOFTWARE', 'REMOTE_ADDR',
    'REMOTE_PORT', 'SERVER_ADDR', 'SERVER_PORT', 'SERVER_NAME',
    'REDIRECT_STATUS', 'PHP_SELF',
];

/**
 * Those variables and every HTTP_* header at the top level, plus:
 * body_length (bytes read from php://input: 0 for multipart posts, which PHP
 * consumes itself), and the parsed get, post and cookie arrays.
 */
function server_info(): array
{
    $info = [];
    foreach (CGI_VARIABLES as $name) {
        $info[$name] = $_SERVER[$name] ?? null;
    }
    foreach ($_SERVER as $name => $value) {
        if (str_starts_with($name, 'HTTP_')) {
            $info[$name] = $value;
        }
    }
    $info['body_length'] = strlen(file_get_contents('php://input'));
    // Objects, so that empty ones are {} in JSON rather than [].
    $info['get'] = (object) $_GET;
    $info['post'] = (object) $_POST;
    $info['cookie'] = (object) $_COOKIE;
    return $info;
}

function send_server_info(): void
{
    header('Content-Type: application/json');
    echo json_encode(server_info(), JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR), "\n";
}
