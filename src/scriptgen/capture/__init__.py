"""Capture stage: pcap/pcapng files -> TCP and UDP sessions (DESIGN §1, docs/capture.md)."""

from scriptgen.capture.sessions import CaptureStats, read_sessions

__all__ = ["CaptureStats", "read_sessions"]
