"""Jetty 9.4's FastCGIProxyServlet, from Debian's packages."""

from __future__ import annotations

import subprocess

from ..context import Context, Target
from ..processes import freePort
from ..scenarios import WARM_UP
from ..tools import JETTY_HOME

# Jetty 9.4's FastCGIProxyServlet reaches php-fpm over TCP only (a unix
# socket came with Jetty 10), so its pool listens on a loopback port.
TCP_POOLS = frozenset({"jetty"})

JETTY_CONTEXT = """<?xml version="1.0"?>
<!DOCTYPE Configure PUBLIC "-//Jetty//Configure//EN" "http://www.eclipse.org/jetty/configure_9_3.dtd">
<!-- The PHP setup of Jetty's FastCGI documentation: try_files, then the proxy. -->
<Configure class="org.eclipse.jetty.servlet.ServletContextHandler">
  <New id="root" class="java.lang.String"><Arg>{root}</Arg></New>
  <Set name="contextPath">/</Set>
  <Set name="resourceBase"><Ref refid="root"/></Set>
  <Set name="welcomeFiles"><Array type="string"><Item>index.php</Item></Array></Set>
  <Call name="addFilter">
    <Arg>org.eclipse.jetty.fcgi.server.proxy.TryFilesFilter</Arg>
    <Arg>/*</Arg>
    <Arg><Call name="of" class="java.util.EnumSet">
      <Arg><Get name="REQUEST" class="javax.servlet.DispatcherType"/></Arg>
    </Call></Arg>
    <Call name="setInitParameter"><Arg>files</Arg><Arg>$path /index.php?p=$path</Arg></Call>
  </Call>
  <Call name="addServlet">
    <Arg><New class="org.eclipse.jetty.servlet.ServletHolder">
      <Arg>default</Arg>
      <Arg><Call name="forName" class="java.lang.Class">
        <Arg>org.eclipse.jetty.servlet.DefaultServlet</Arg>
      </Call></Arg>
      <Call name="setInitParameter"><Arg>dirAllowed</Arg><Arg>false</Arg></Call>
    </New></Arg>
    <Arg>/</Arg>
  </Call>
  <Call name="addServlet">
    <Arg>org.eclipse.jetty.fcgi.server.proxy.FastCGIProxyServlet</Arg>
    <Arg>*.php</Arg>
    <Call name="setInitParameter"><Arg>proxyTo</Arg><Arg>http://127.0.0.1:{port}</Arg></Call>
    <Call name="setInitParameter"><Arg>prefix</Arg><Arg>/</Arg></Call>
    <Call name="setInitParameter"><Arg>scriptRoot</Arg><Arg><Ref refid="root"/></Arg></Call>
    <Call name="setInitParameter"><Arg>scriptPattern</Arg><Arg>(.+?\\.php)</Arg></Call>
  </Call>
</Configure>
"""


def startJetty(context: Context, name: str) -> Target:
    """
    Jetty 9.4 from Debian's packages: a base with the http, deploy and fcgi
    modules, and one context of TryFilesFilter + DefaultServlet +
    FastCGIProxyServlet with its default settings (HttpClient's connection
    pool, the default thread pool, the JVM's default heap).
    """
    java = context.tools["java"]
    port = freePort()
    base = context.work / "jetty"
    (base / "webapps").mkdir(parents=True)
    setup = subprocess.run(
        [
            *(java, "-jar", f"{JETTY_HOME}/start.jar"),
            *(f"jetty.home={JETTY_HOME}", f"jetty.base={base}"),
            *("--create-startd", "--add-to-start=http,deploy,fcgi"),
        ],
        capture_output=True,
        text=True,
        cwd=base,
        timeout=120,
        check=False,
    )
    context.log(f"{name}-setup").write_text(setup.stdout + setup.stderr)
    if setup.returncode != 0:
        raise RuntimeError(f"{name}: the Jetty base was not created:\n{setup.stderr[-2000:]}")
    (base / "webapps" / "php.xml").write_text(
        JETTY_CONTEXT.replace("{root}", str(context.docroot)).replace(
            "{port}", str(context.ports[name])
        )
    )
    argv = [java, "-jar", f"{JETTY_HOME}/start.jar", f"jetty.home={JETTY_HOME}"]
    argv += [f"jetty.base={base}", "jetty.http.host=127.0.0.1", f"jetty.http.port={port}"]
    process = context.processes.start(name, argv, context.log(name), cwd=base)
    warm = max(WARM_UP, context.jettyWarmUp)
    label = f"Jetty 9.4 FastCGIProxyServlet (defaults, php-fpm on loopback TCP), {warm:g} s warm-up"
    return Target(name, label, process.pid, port)
