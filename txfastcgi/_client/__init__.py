"""
The FastCGI client, on Twisted: L{protocol} speaks to one php-fpm connection
over the codec of L{txfastcgi._fastcgi}; L{pool} hands connections out and
takes them back (the mechanism), L{policy} decides how many and when (the
policy); L{balancer} spreads requests over several pools.  It knows nothing
of HTTP.
"""
