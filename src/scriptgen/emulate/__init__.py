"""Emulate stage: the sans-I/O emulator core. Standard library only; imports nothing
outside this package (tests/emulate/test_isolation.py checks it), because the honeyd
export embeds engine.py verbatim."""

from scriptgen.emulate.engine import (
    Close, Emulator, EmulatorParams, Event, Input, Machine, NeedData, Send, Unmatched,
)

__all__ = ["Close", "Emulator", "EmulatorParams", "Event", "Input", "Machine", "NeedData", "Send", "Unmatched"]
