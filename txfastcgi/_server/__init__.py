"""
The server that C{twist fastcgi-proxy} runs: L{options} parses the command
line, L{configuration} makes it a typed configuration, L{service} assembles
the service from it (L{front} for what each process serves, L{listeners},
L{announce}), L{lifecycle} orders its start and stop, L{workers} and
L{worker} run more processes, L{phpfpm} a private php-fpm; L{metrics}
exposes the pools' counts to Prometheus.  L{txfastcgi.tap} is its public face.
"""
