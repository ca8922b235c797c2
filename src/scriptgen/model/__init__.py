"""The vocabulary shared by every stage, named after the stage that makes it.

capture: Endpoint, Message, Session (session.py)
learn:   Region, Slot, Token, Clock, Count, Length, Port, Label, Link, Announce, Transition,
         State, TokenSpec, Framing, PortModel, Model (machine.py)

This package imports nothing from the rest of scriptgen.
"""

from scriptgen.model.machine import (
    BEFORE_BYTES, CLOCK_ENCODINGS, INT_ENCODINGS, PORT_ENCODINGS, Announce, Clock, Count, Framing, Label, Length, Link,
    Model, Part, Port, PortModel, Region, Slot, State, Token, TokenSpec, Transition,
)
from scriptgen.model.session import (
    Endpoint, Gap, Message, Sender, Session, Transport, closed_udp_ports, learnable, silent_open_ports,
)

__all__ = [
    "Endpoint", "Gap", "Message", "Sender", "Session", "Transport", "closed_udp_ports", "learnable",
    "silent_open_ports",
    "Region", "Slot", "Token", "Clock", "Count", "Length", "Port", "Part", "Label", "Link", "Announce", "Transition",
    "State", "TokenSpec", "Framing", "PortModel", "Model", "INT_ENCODINGS", "CLOCK_ENCODINGS", "PORT_ENCODINGS",
    "BEFORE_BYTES",
]
