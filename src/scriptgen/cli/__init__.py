"""Command-line front: parses, calls the library, renders. Nothing imports it."""
