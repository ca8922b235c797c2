"""Learn stage: sessions -> raw state machine -> simplified model (DESIGN §2-3).

    builder.build (raw tree per port) -> simplify.simplify (PI + Region Analysis) -> Model

`align` holds the PI alignment (parasail), `regions` the column analysis and
microclustering. docs/algorithm.md describes the whole as implemented.
"""

from scriptgen.learn.pipeline import learn, learn_trees

__all__ = ["learn", "learn_trees"]
