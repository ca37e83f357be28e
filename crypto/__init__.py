"""Saltline's cryptographic core: pure, synchronous, and dependent only on the standard
library and PyNaCl. See ``docs/protocol/`` for the specification this package implements."""
