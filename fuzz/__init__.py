"""Fuzz targets for txfastcgi's parsers; see README.rst beside this file."""
