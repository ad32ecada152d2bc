"""Byte sizes by their binary unit, defined once."""

MIB = 1024**2
GIB = 1024**3
