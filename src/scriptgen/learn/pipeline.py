"""Learn stage driver: sessions -> Model, one port per worker process."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor

from scriptgen.learn.builder import RawTree, build
from scriptgen.learn.channels import find_channels
from scriptgen.learn.simplify import simplify
from scriptgen.model import Model, PortModel, Session
from scriptgen.params import LearnParams

__all__ = ["learn", "learn_trees"]

Progress = Callable[[PortModel], None]
LevelProgress = Callable[[RawTree, int], None]


def learn(sessions: Iterable[Session], params: LearnParams | None = None, *,
          sources: Iterable[str] = (), progress: Progress | None = None,
          level_progress: LevelProgress | None = None) -> Model:
    """Learn one state machine per (transport, server port) of `sessions`. `progress` is
    called as each port is done; `level_progress` as each level of a port's tree is."""
    params = params or LearnParams()
    sessions = list(sessions)
    links = find_channels(sessions) if "channels" in params.rules else {}
    return learn_trees(list(build(sessions, params, links)), params, sources=sources, progress=progress,
                       level_progress=level_progress)


def learn_trees(trees: list[RawTree], params: LearnParams, *, sources: Iterable[str] = (),
                progress: Progress | None = None, level_progress: LevelProgress | None = None) -> Model:
    jobs = params.jobs or os.cpu_count() or 1
    ports: list[PortModel] = []
    pool = ProcessPoolExecutor(max_workers=jobs) if jobs > 1 else None
    try:
        for tree in trees:
            # Parallel over the states of each level of the tree (learn/simplify.py).
            def on_level(done: int, tree: RawTree = tree) -> None:
                if level_progress:
                    level_progress(tree, done)

            ports.append(simplify(tree, params, pool.map if pool else map, on_level))
            if progress:
                progress(ports[-1])
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    # As the model file holds them (JSON has lists, not tuples): a model compares equal loaded.
    recorded = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(params).items() if k != "jobs"}
    return Model(ports, recorded, list(sources))
