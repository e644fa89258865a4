"""
The HTTP side: pure functions for what PHP sees and what the client gets
(L{routing}, L{cgi}, L{framing}, L{forwarded}), the core that applies them
to one exchange over the FastCGI client (L{core}, which knows no front), and
the fronts over it: L{resource} (twisted.web, for embedders and HTTP/2) with
L{web}, the one module that touches twisted.web's privates, and L{http1},
the dedicated HTTP/1.1 front, with L{staticfiles}, L{alpn} and L{accesslog};
L{status} is the JSON status page of the backends.
It knows nothing of the command line.
"""
