#!/usr/bin/env python3
"""
Benchmark txfastcgi against nginx, Caddy, Apache, Jetty, HAProxy, h2o and
lighttpd in front of identical php-fpm pools, and check every target of
issue 12. One command, from a clone of the repository::

    python3 benchmarks/run.py --quick      # a few minutes
    python3 benchmarks/run.py              # the full run
    python3 benchmarks/run.py --profile    # py-spy (or cProfile) of txfastcgi, tiny responses

The work is in the package benchmarks/txbench; see benchmarks/README.rst.
"""

import sys
from pathlib import Path

# The checkout's root, so that benchmarks.txbench imports from a clean clone.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.txbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
