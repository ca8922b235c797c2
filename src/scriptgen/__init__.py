"""scriptgen: learn a honeypot emulator of a network protocol from packet captures.

Pipeline (data flows one way): capture -> learn -> modelfile -> emulate -> serve/export/evaluate.
See docs/architecture.md.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
