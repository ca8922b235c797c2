"""Emulate stage: the sans-I/O emulator core. Standard library only; imports nothing
outside this package (tests/emulate/test_isolation.py checks it), because the honeyd
export embeds engine.py verbatim."""

from scriptgen.emulate.engine import (
    Channel, Close, Connect, Emulator, EmulatorParams, Event, Input, Listen, Machine, NeedData, Send, Unmatched,
)

__all__ = ["Channel", "Close", "Connect", "Emulator", "EmulatorParams", "Event", "Input", "Listen", "Machine",
           "NeedData", "Send", "Unmatched"]
