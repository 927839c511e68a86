"""clinie core: the shared domain (schema, brat I/O, text windows, scoring). No Ray, no model library."""

__version__ = "0.1.0"
