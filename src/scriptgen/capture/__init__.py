"""Capture stage: pcap/pcapng files -> TCP and UDP sessions (DESIGN §1, docs/capture.md)."""

from scriptgen.capture.files import capture_files
from scriptgen.capture.sessions import CaptureStats, read_sessions

__all__ = ["CaptureStats", "capture_files", "read_sessions"]
