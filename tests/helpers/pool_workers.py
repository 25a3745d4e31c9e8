"""What the worker-pool tests (tests/test_pool.py) run on the ranks: answers, and the ways an
exchange breaks (an exception or a result the parent cannot load, a dead rank, a hung one)."""

import os
import time

import torch.distributed as dist


def echo(value):
    return value, dist.get_rank()


class NeedsTwoArguments(Exception):
    """Pickles, but does not load: pickle rebuilds it from ``args``, which holds one message."""

    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


def refuse_to_load():
    raise RuntimeError("this object cannot be loaded")


class LoadsNowhere:
    def __reduce__(self):
        return refuse_to_load, ()


def on_rank(rank, action):
    """``action`` on ``rank``; every other rank answers normally."""
    if dist.get_rank() != rank:
        return "fine"
    if action == "raise unloadable":
        raise NeedsTwoArguments("left", "right")
    if action == "return unloadable":
        return LoadsNowhere()
    if action == "return unpicklable":
        return lambda: 0
    if action == "exit":
        os._exit(3)
    if action == "sleep":
        time.sleep(30)
    raise ValueError(action)
