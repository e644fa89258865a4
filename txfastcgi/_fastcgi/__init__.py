"""
The FastCGI protocol, with no I/O: L{records} encodes and decodes records
and keeps a connection's state as data (one enum, one table of moves).  It
knows nothing of Twisted; everything above it may import it.
"""
