"""
C{python -m txfastcgi ARGS}: the same as C{twist fastcgi-proxy ARGS}, for
a machine where the virtualenv's C{bin} is not on C{PATH} or C{twist} is
another Twisted's.
"""

import sys

# Twisted's own "python -m twisted" runs this same class.
from twisted.application.twist._twist import Twist

if __name__ == "__main__":
    Twist.main([sys.argv[0], "fastcgi-proxy", *sys.argv[1:]])
