"""The vocabulary shared by every stage, named after the stage that makes it.

capture: Endpoint, Message, Session (session.py)
learn:   Region, Slot, Label, Link, Transition, State, PortModel, Model (machine.py)

This package imports nothing from the rest of scriptgen.
"""

from scriptgen.model.machine import (
    Label, Link, Model, Part, PortModel, Region, Slot, State, Transition,
)
from scriptgen.model.session import Endpoint, Gap, Message, Sender, Session, Transport

__all__ = [
    "Endpoint", "Gap", "Message", "Sender", "Session", "Transport",
    "Region", "Slot", "Part", "Label", "Link", "Transition", "State", "PortModel", "Model",
]
