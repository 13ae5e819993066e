"""The wire layer: protocol parsers, sans-I/O (bytes and timestamps in, events out)."""
