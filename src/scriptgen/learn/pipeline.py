"""Learn stage driver: sessions -> Model, one port per worker process."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor

from scriptgen.learn.builder import RawTree, build
from scriptgen.learn.simplify import simplify
from scriptgen.model import Model, PortModel, Session
from scriptgen.params import LearnParams

__all__ = ["learn", "learn_trees"]

Progress = Callable[[PortModel], None]


def learn(sessions: Iterable[Session], params: LearnParams | None = None, *,
          sources: Iterable[str] = (), progress: Progress | None = None) -> Model:
    """Learn one state machine per (transport, server port) of `sessions`."""
    params = params or LearnParams()
    return learn_trees(list(build(sessions, params)), params, sources=sources, progress=progress)


def learn_trees(trees: list[RawTree], params: LearnParams, *, sources: Iterable[str] = (),
                progress: Progress | None = None) -> Model:
    jobs = params.jobs or os.cpu_count() or 1
    ports: list[PortModel] = []
    if jobs <= 1 or len(trees) <= 1:
        for tree in trees:
            ports.append(simplify(tree, params))
            if progress:
                progress(ports[-1])
    else:
        with ProcessPoolExecutor(max_workers=min(jobs, len(trees))) as pool:
            for port in pool.map(simplify, trees, [params] * len(trees)):
                ports.append(port)
                if progress:
                    progress(port)
    recorded = {k: v for k, v in dataclasses.asdict(params).items() if k != "jobs"}
    return Model(ports, recorded, list(sources))
