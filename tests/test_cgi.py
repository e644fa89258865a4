"""
The CGI layer: request params out, response headers in. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txfastcgi._http.cgi import (
    CGIParams,
    CGIRequest,
    ResponseHeadParser,
    headerParams,
    parseResponseHead,
)
from txfastcgi.errors import MalformedResponse

REQUEST = CGIRequest(
    method=b"POST",
    requestURI=b"/blog/a%20b.php/extra?x=1",
    queryString=b"x=1",
    scriptFilename="/srv/site/a b.php",
    scriptName="/blog/a b.php",
    pathInfo="/extra",
    documentURI="/blog/a b.php/extra",
    documentRoot="/srv/site",
    serverProtocol=b"HTTP/1.1",
    https=False,
    remoteAddr="127.0.0.1",
    remotePort=50000,
    serverAddr="127.0.0.2",
    serverPort=8080,
    serverName=b"example.com",
    contentType=b"application/x-www-form-urlencoded",
    contentLength=3,
    headers=[(b"Host", [b"example.com:8080"]), (b"Accept", [b"text/html"])],
)


def paramsOf(request: CGIRequest, **extra: bytes) -> dict[bytes, bytes]:
    params = request.params(b"txfastcgi/test", {k.encode(): v for k, v in extra.items()})
    names = [name for name, _ in params]
    assert len(names) == len(set(names)), "a param is sent twice"
    return dict(params)


def test_the_params_nginx_fastcgi_conf_sends_are_all_there() -> None:
    params = paramsOf(REQUEST)
    assert params == {
        b"GATEWAY_INTERFACE": b"CGI/1.1",
        b"SERVER_SOFTWARE": b"txfastcgi/test",
        b"REQUEST_METHOD": b"POST",
        b"REQUEST_URI": b"/blog/a%20b.php/extra?x=1",
        b"QUERY_STRING": b"x=1",
        b"SCRIPT_FILENAME": b"/srv/site/a b.php",
        b"SCRIPT_NAME": b"/blog/a b.php",
        b"PATH_INFO": b"/extra",
        b"PATH_TRANSLATED": b"/srv/site/extra",
        b"DOCUMENT_URI": b"/blog/a b.php/extra",
        b"DOCUMENT_ROOT": b"/srv/site",
        b"SERVER_PROTOCOL": b"HTTP/1.1",
        b"REQUEST_SCHEME": b"http",
        b"REMOTE_ADDR": b"127.0.0.1",
        b"REMOTE_PORT": b"50000",
        b"SERVER_ADDR": b"127.0.0.2",
        b"SERVER_PORT": b"8080",
        b"SERVER_NAME": b"example.com",
        b"CONTENT_TYPE": b"application/x-www-form-urlencoded",
        b"CONTENT_LENGTH": b"3",
        b"REDIRECT_STATUS": b"200",
        b"HTTP_HOST": b"example.com:8080",
        b"HTTP_ACCEPT": b"text/html",
    }


def test_https_is_absent_on_plain_http_and_on_with_tls() -> None:
    assert b"HTTPS" not in paramsOf(REQUEST)
    secure = paramsOf(replace(REQUEST, https=True))
    assert secure[b"HTTPS"] == b"on"
    assert secure[b"REQUEST_SCHEME"] == b"https"


def test_no_path_info_means_no_path_translated() -> None:
    params = paramsOf(replace(REQUEST, pathInfo=""))
    assert params[b"PATH_INFO"] == b""
    assert b"PATH_TRANSLATED" not in params


def test_a_request_without_a_body_sends_an_empty_content_length() -> None:
    params = paramsOf(replace(REQUEST, method=b"GET", contentType=None, contentLength=None))
    assert params[b"CONTENT_LENGTH"] == b""
    assert params[b"CONTENT_TYPE"] == b""


def test_a_file_name_that_is_not_utf8_is_sent_as_its_original_bytes() -> None:
    name = b"/srv/site/caf\xe9.php".decode("utf-8", "surrogateescape")
    assert paramsOf(replace(REQUEST, scriptFilename=name))[b"SCRIPT_FILENAME"] == (
        b"/srv/site/caf\xe9.php"
    )


def test_configured_params_win_over_computed_ones_and_headers() -> None:
    request = replace(REQUEST, headers=[(b"Php-Value", [b"auto_prepend_file=/etc/passwd"])])
    params = paramsOf(request, HTTP_PHP_VALUE=b"configured", SERVER_NAME=b"forced")
    assert params[b"HTTP_PHP_VALUE"] == b"configured"
    assert params[b"SERVER_NAME"] == b"forced"


def test_configured_params_win_over_those_encoded_once_per_site_or_listener() -> None:
    params = paramsOf(
        REQUEST, SERVER_SOFTWARE=b"Apache", DOCUMENT_ROOT=b"/elsewhere", SERVER_PORT=b"443"
    )
    assert params[b"SERVER_SOFTWARE"] == b"Apache"
    assert params[b"DOCUMENT_ROOT"] == b"/elsewhere"
    assert (params[b"SERVER_ADDR"], params[b"SERVER_PORT"]) == (b"127.0.0.2", b"443")


def test_each_listener_and_root_gets_its_own_params_from_one_site() -> None:
    """What is encoded once per listener or root is never another's."""
    site = CGIParams(b"txfastcgi/test")
    seen = {
        (address, port, root): dict(
            site.params(replace(REQUEST, serverAddr=address, serverPort=port, documentRoot=root))
        )
        for _ in range(2)
        for address, port in [("127.0.0.2", 8080), ("127.0.0.2", 8443), ("unix:", None)]
        for root in ["/srv/a", "/srv/b"]
    }
    for (address, port, root), params in seen.items():
        assert params[b"SERVER_ADDR"] == address.encode()
        assert params[b"SERVER_PORT"] == (b"" if port is None else b"%d" % port)
        assert params[b"DOCUMENT_ROOT"] == root.encode()


def test_repeated_headers_are_joined_and_cookies_with_a_semicolon() -> None:
    params = dict(
        headerParams(
            [
                (b"Cookie", [b"a=1", b"b=2"]),
                (b"Accept", [b"text/html", b"application/json"]),
                (b"X-Custom", [b"one"]),
            ]
        )
    )
    assert params == {
        b"HTTP_COOKIE": b"a=1; b=2",
        b"HTTP_ACCEPT": b"text/html, application/json",
        b"HTTP_X_CUSTOM": b"one",
    }


def test_a_proxy_header_never_becomes_http_proxy() -> None:
    assert headerParams([(b"Proxy", [b"http://evil:8080"])]) == []


@pytest.mark.parametrize("name", [b"X_Forwarded_For", b"X.Forwarded.For", b"X-Forwarded For"])
def test_header_names_that_would_alias_another_are_dropped(name: bytes) -> None:
    assert headerParams([(name, [b"6.6.6.6"]), (b"X-Forwarded-For", [b"1.2.3.4"])]) == [
        (b"HTTP_X_FORWARDED_FOR", b"1.2.3.4")
    ]


def test_body_framing_headers_are_not_passed_as_http_params() -> None:
    assert (
        headerParams(
            [
                (b"Content-Length", [b"10"]),
                (b"Content-Type", [b"text/plain"]),
                (b"Transfer-Encoding", [b"chunked"]),
            ]
        )
        == []
    )


# Responses


def test_a_plain_header_block_is_200_with_its_headers() -> None:
    head = parseResponseHead(b"Content-type: text/html; charset=UTF-8\r\nX-A: 1")
    assert head.code == 200
    assert head.reason is None
    assert head.headers == ((b"Content-type", b"text/html; charset=UTF-8"), (b"X-A", b"1"))


@pytest.mark.parametrize(
    "line, code, reason",
    [
        (b"Status: 404", 404, None),
        (b"Status: 404 Not Found", 404, b"Not Found"),
        (b"Status:404", 404, None),
        (b"Status: 404: x", 404, b"x"),
        (b"Status: 418", 418, None),
        (b"status: 201 Created Here", 201, b"Created Here"),
    ],
)
def test_status_variants(line: bytes, code: int, reason: bytes | None) -> None:
    head = parseResponseHead(line + b"\r\nContent-Type: text/plain")
    assert (head.code, head.reason) == (code, reason)
    assert head.headers == ((b"Content-Type", b"text/plain"),)


@pytest.mark.parametrize("value", [b"abc", b"99", b"600", b"4040", b"", b"-200"])
def test_a_status_that_is_not_an_http_code_is_malformed(value: bytes) -> None:
    with pytest.raises(MalformedResponse):
        parseResponseHead(b"Status: " + value)


def test_location_without_status_is_a_302_and_status_wins_either_way_round() -> None:
    assert parseResponseHead(b"Location: /x").code == 302
    assert parseResponseHead(b"Status: 301 Moved\r\nLocation: /x").code == 301
    assert parseResponseHead(b"Location: /x\r\nStatus: 303").code == 303


def test_every_set_cookie_is_kept_and_hop_by_hop_headers_are_dropped() -> None:
    head = parseResponseHead(
        b"Set-Cookie: a=1\nSet-Cookie: b=2\nConnection: close\nTransfer-Encoding: chunked\n"
        b"Keep-Alive: timeout=5\nUpgrade: h2c"
    )
    assert head.headers == ((b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"))


def test_content_length_is_parsed_and_must_be_a_number() -> None:
    assert parseResponseHead(b"Content-Length: 12").contentLength == 12
    assert parseResponseHead(b"X: y").contentLength is None
    with pytest.raises(MalformedResponse):
        parseResponseHead(b"Content-Length: 12, 13")


@pytest.mark.parametrize("line", [b"no colon here", b"Bad Name: x", b": empty name", b"\x00: y"])
def test_a_line_that_is_not_a_header_is_malformed(line: bytes) -> None:
    with pytest.raises(MalformedResponse):
        parseResponseHead(b"Content-Type: text/html\r\n" + line)


def test_the_head_parser_finds_a_terminator_split_across_pieces() -> None:
    output = b"Status: 201\r\nContent-Type: text/plain\r\n\r\nbody"
    for cut in range(1, len(output)):
        parser = ResponseHeadParser()
        result, unread = parser.feed(output[:cut]), output[cut:]
        if result is None:
            result, unread = parser.feed(unread), b""
        assert result is not None, cut
        head, rest = result
        assert head.code == 201
        assert rest + unread == b"body"


def test_the_head_parser_accepts_bare_line_feeds() -> None:
    result = ResponseHeadParser().feed(b"Content-Type: text/plain\n\nhello\n")
    assert result is not None
    assert result[1] == b"hello\n"


def test_a_header_block_over_the_limit_is_refused_as_too_big() -> None:
    parser = ResponseHeadParser(maxSize=1000)
    with pytest.raises(MalformedResponse, match="too big header"):
        for _ in range(20):
            parser.feed(b"X-Filler: " + b"a" * 90 + b"\r\n")


@given(st.binary(max_size=300))
def test_the_head_parser_raises_nothing_but_malformed_response(output: bytes) -> None:
    try:
        ResponseHeadParser(maxSize=200).feed(output)
    except MalformedResponse:
        pass


@pytest.mark.parametrize(
    "block", [b"A: 1\r\nB: 2\nC: 3", b"A: 1\nB: 2\r\nC: 3", b"A: 1\r\nB: 2\r\nC: 3"]
)
def test_a_header_block_may_mix_crlf_and_bare_line_feeds(block: bytes) -> None:
    assert parseResponseHead(block).headers == ((b"A", b"1"), (b"B", b"2"), (b"C", b"3"))


# The header grammar as one regular expression: the parser reads lines as it does.
_HEADER_LINE_GRAMMAR = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*:[ \t]*([^\x00\r]*?)[ \t]*\Z"
)
# One line (an empty block has none).
_LINE_BYTES = st.binary(min_size=1, max_size=12).map(lambda b: b.replace(b"\n", b"x")) | st.lists(
    st.sampled_from([b"X-A", b"x", b":", b" ", b"\t", b"\x00", b"\r", b"v", b"a b", b"\x80"]),
    min_size=1,
).map(b"".join)


@given(_LINE_BYTES)
def test_a_header_line_is_read_as_the_grammar_says(line: bytes) -> None:
    match = _HEADER_LINE_GRAMMAR.match(line)
    special = match is not None and match.group(1).lower() in (b"status", b"content-length")
    if match is None:
        with pytest.raises(MalformedResponse):
            parseResponseHead(line)
    elif not special:
        head = parseResponseHead(line)
        assert head.headers == (match.groups(),) or head.headers == ()


_OUTPUTS = st.lists(
    st.sampled_from([b"X-A: 1", b"Status: 404 Gone", b"\r\n", b"\n", b"\r", b"body", b": x"]),
    max_size=10,
).map(b"".join)


@given(_OUTPUTS, st.integers(min_value=1, max_value=7))
def test_the_header_block_is_found_alike_whole_or_in_pieces(output: bytes, size: int) -> None:
    def parsed(pieces: list[bytes]) -> object:
        parser = ResponseHeadParser()
        try:
            for index, piece in enumerate(pieces):
                result = parser.feed(piece)
                if result is not None:
                    head, rest = result
                    return head, rest + b"".join(pieces[index + 1 :])
        except MalformedResponse:
            return "malformed"
        return None

    whole = parsed([output])
    cut = parsed([output[i : i + size] for i in range(0, len(output), size)])
    assert whole == cut
