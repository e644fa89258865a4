"""
The anchors: nginx, Caddy, Apache, HAProxy, h2o and lighttpd in front of
php-fpm, each configured the way its documentation (and ../shared/bench's
rig) does, with its own pool on a unix socket.

One table: each anchor is a function from an L{AnchorSite} (where its
files go, its ports, its pool) to a L{Launch} (its command line), and one
starter runs any of them, so adding an anchor is one function and one row.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..context import Context, Target
from ..processes import freePort


@dataclass(frozen=True)
class AnchorSite:
    """What an anchor's configuration is made of."""

    tool: str
    home: Path
    docroot: Path
    backend: Path
    port: int
    errorLog: Path
    # The TLS port and (key, certificate), for the HTTP/2 scenario.
    tls: tuple[int, tuple[Path, Path]] | None = None


@dataclass(frozen=True)
class Launch:
    """How to start a configured anchor, and what to call it in the report."""

    argv: list[str]
    description: str
    env: dict[str, str] | None = None
    cwd: Path | None = None
    servesFiles: bool = True


def nginx(site: AnchorSite) -> Launch:
    """
    nginx with one worker, the usual try_files + fastcgi_pass, no upstream
    keepalive (nginx's default: one FastCGI connection per request), and
    sendfile on, as Debian's nginx.conf has it and the 1 MiB static target
    names.
    """
    tls = ""
    if site.tls is not None:
        tlsPort, (key, cert) = site.tls
        tls = (
            f"listen 127.0.0.1:{tlsPort} ssl http2;\n"
            f"    ssl_certificate {cert};\n    ssl_certificate_key {key};"
        )
    home = site.home
    (home / "nginx.conf").write_text(
        f"""
daemon off;
worker_processes 1;
user www-data;
pid {home / "nginx.pid"};
error_log {site.errorLog};
events {{ worker_connections 4096; }}
http {{
  include /etc/nginx/mime.types;
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_max_body_size 100m;
  client_body_temp_path {home / "client_body"};
  fastcgi_temp_path {home / "fastcgi"};
  proxy_temp_path {home / "proxy"};
  uwsgi_temp_path {home / "uwsgi"};
  scgi_temp_path {home / "scgi"};
  upstream php {{ server unix:{site.backend}; }}
  server {{
    listen 127.0.0.1:{site.port};
    {tls}
    root {site.docroot};
    index index.php;
    location / {{ try_files $uri $uri/ /index.php?$args; }}
    location ~ [^/]\\.php(/|$) {{
      fastcgi_split_path_info ^(.+?\\.php)(/.*)$;
      try_files $fastcgi_script_name =404;
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
      fastcgi_param PATH_INFO $fastcgi_path_info;
      fastcgi_pass php;
    }}
  }}
}}
"""
    )
    argv = [site.tool, "-p", str(home), "-c", str(home / "nginx.conf")]
    return Launch(argv, "nginx, 1 worker, no upstream keepalive, sendfile on")


def caddy(site: AnchorSite) -> Launch:
    """Caddy with C{php_fastcgi} and C{file_server}, no admin API, no automatic HTTPS."""
    home = site.home
    tls = ""
    if site.tls is not None:
        tlsPort, (key, cert) = site.tls
        tls = f"https://127.0.0.1:{tlsPort} {{\n  import site\n  tls {cert} {key}\n}}\n"
    (home / "Caddyfile").write_text(
        f"""{{
  admin off
  auto_https off
  storage file_system {home}
}}
(site) {{
  root * {site.docroot}
  php_fastcgi unix/{site.backend}
  file_server
}}
http://127.0.0.1:{site.port} {{
  import site
}}
{tls}"""
    )
    env = dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home), XDG_CONFIG_HOME=str(home))
    argv = [site.tool, "run", "--config", str(home / "Caddyfile"), "--adapter", "caddyfile"]
    return Launch(argv, "Caddy php_fastcgi (defaults)", env=env, cwd=home)


APACHE_MODULES = "/usr/lib/apache2/modules"


def apache(site: AnchorSite) -> Launch:
    """
    Apache 2.4 with mpm_event (compiled-in defaults) and mod_proxy_fcgi over
    the pool's unix socket, no connection reuse (its default); HTTP/2 when
    mod_http2 is there.
    """
    wanted = ["mpm_event", "authz_core", "proxy", "proxy_fcgi", "dir", "mime"]
    tls = ""
    if site.tls is not None:
        tlsPort, (key, cert) = site.tls
        wanted += ["socache_shmcb", "ssl", "http2"]
        tls = f"""Listen 127.0.0.1:{tlsPort}
<VirtualHost 127.0.0.1:{tlsPort}>
  Protocols h2 http/1.1
  SSLEngine on
  SSLCertificateFile {cert}
  SSLCertificateKeyFile {key}
</VirtualHost>
"""
    loads = "\n".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in wanted)
    home = site.home
    (home / "apache.conf").write_text(
        f"""ServerRoot /etc/apache2
DefaultRuntimeDir {home}
PidFile {home / "apache.pid"}
Mutex file:{home} default
ErrorLog {site.errorLog}
Listen 127.0.0.1:{site.port}
{loads}
TypesConfig /etc/mime.types
User www-data
Group www-data
ServerName 127.0.0.1
DocumentRoot {site.docroot}
DirectoryIndex index.php
<Directory {site.docroot}>
  Require all granted
</Directory>
<FilesMatch "\\.php$">
  SetHandler "proxy:unix:{site.backend}|fcgi://localhost/"
</FilesMatch>
{tls}"""
    )
    argv = [site.tool, "-f", str(home / "apache.conf"), "-D", "FOREGROUND"]
    return Launch(argv, "Apache mpm_event + mod_proxy_fcgi")


def haproxy(site: AnchorSite) -> Launch:
    """
    HAProxy 2.6's C{fcgi-app} as its manual's example (and the rig): kept
    FastCGI connections (C{option keep-conn}), the documented path-info
    regex, one thread, and a server C{maxconn} of the pool's 4 workers so
    that the rest wait in HAProxy's queue. It serves no files: every request
    goes to php-fpm, so it runs the PHP scenarios only.
    """
    (site.home / "haproxy.cfg").write_text(
        f"""global
  maxconn 4096
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:{site.port}
  default_backend php
backend php
  use-fcgi-app php
  server php unix@{site.backend} proto fcgi maxconn 4
fcgi-app php
  option keep-conn
  docroot {site.docroot}
  index index.php
  path-info ^(/.+\\.php)(/.*)?$
"""
    )
    argv = [site.tool, "-db", "-f", str(site.home / "haproxy.cfg")]
    return Launch(argv, "HAProxy fcgi-app, 1 thread, keep-conn", servesFiles=False)


def h2o(site: AnchorSite) -> Launch:
    """
    h2o 2.2 with one thread: its file handler with a C{.php} custom handler
    over FastCGI and the documented front controller (an internal redirect
    to /index.php/), as the rig configures it.
    """
    (site.home / "h2o.conf").write_text(
        f"""user: www-data
error-log: {site.errorLog}
num-threads: 1
listen:
  host: 127.0.0.1
  port: {site.port}
hosts:
  default:
    paths:
      /:
        file.dir: {site.docroot}
        file.index: [ 'index.php' ]
        file.custom-handler:
          extension: .php
          fastcgi.document_root: {site.docroot}
          fastcgi.connect:
            port: {site.backend}
            type: unix
        redirect:
          url: /index.php/
          internal: YES
          status: 307
"""
    )
    return Launch([site.tool, "-c", str(site.home / "h2o.conf")], "h2o, 1 thread, fastcgi")


def lighttpd(site: AnchorSite) -> Launch:
    """
    lighttpd 1.4 with mod_fastcgi and mod_staticfile, the front controller
    by C{url.rewrite-if-not-file}, as the rig configures it.
    """
    (site.home / "lighttpd.conf").write_text(
        f"""server.modules = (
  "mod_indexfile", "mod_access", "mod_rewrite", "mod_fastcgi", "mod_staticfile"
)
server.document-root = "{site.docroot}"
server.errorlog = "{site.errorLog}"
server.pid-file = "{site.home / "lighttpd.pid"}"
server.username = "www-data"
server.groupname = "www-data"
server.bind = "127.0.0.1"
server.port = {site.port}
index-file.names = ( "index.php", "index.html" )
static-file.exclude-extensions = ( ".php", ".pl", ".fcgi" )
include_shell "/usr/share/lighttpd/create-mime.conf.pl"
fastcgi.server = (
  ".php" => (( "socket" => "{site.backend}", "broken-scriptfilename" => "enable" ))
)
url.rewrite-if-not-file = (
  "^/[^?]*\\.php(/[^?]*)?(\\?.*)?$" => "$0",
  "^[^?]*/(\\?.*)?$" => "$0",
  "" => "/index.php${{qsa}}"
)
"""
    )
    argv = [site.tool, "-D", "-f", str(site.home / "lighttpd.conf")]
    return Launch(argv, "lighttpd, mod_fastcgi")


@dataclass(frozen=True)
class Anchor:
    """One row of the table: the tool it needs, its configuration, whether it gets TLS."""

    tool: str
    configure: Callable[[AnchorSite], Launch]
    tls: Callable[[], bool] = lambda: False


ANCHORS = {
    "nginx": Anchor("nginx", nginx, lambda: True),
    "caddy": Anchor("caddy", caddy, lambda: True),
    "apache": Anchor("apache2", apache, lambda: os.path.exists(f"{APACHE_MODULES}/mod_http2.so")),
    "haproxy": Anchor("haproxy", haproxy),
    "h2o": Anchor("h2o", h2o),
    "lighttpd": Anchor("lighttpd", lighttpd),
}


def startAnchor(context: Context, name: str) -> Target:
    """Configure and start the anchor C{name} of L{ANCHORS} in its own directory."""
    anchor = ANCHORS[name]
    home = context.work / name
    home.mkdir(mode=0o777)
    # h2o and lighttpd open their logs after dropping to www-data.
    home.chmod(0o777)
    tls = None
    if context.cert is not None and anchor.tls():
        tls = (freePort(), context.cert)
    site = AnchorSite(
        context.tools[anchor.tool],
        home,
        context.docroot,
        context.sockets[name],
        freePort(),
        home / "error.log",
        tls,
    )
    launch = anchor.configure(site)
    process = context.processes.start(
        name, launch.argv, context.log(name), env=launch.env, cwd=launch.cwd
    )
    return Target(
        name,
        launch.description,
        process.pid,
        site.port,
        tls and tls[0],
        servesFiles=launch.servesFiles,
    )
