"""``compile-ops``: check, bench and audit, one module each (``python -m compile_ops.cli``).

Only the module of the command being run is imported, and the heavy parts (the worker pool,
Dynamo, the benchmark's ops) only once it runs, so ``--help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

__all__ = ["COMMANDS", "entry", "main", "version"]

COMMANDS = {
    "check": (
        "compile_ops.cli.check",
        "every op and the MoE model, eager and compiled vs reference",
    ),
    "bench": ("compile_ops.cli.bench", "time our collectives against raw c10d and functional ones"),
    "audit": (
        "compile_ops.cli.audit",
        "each op of a torch.ops namespace: can torch.compile trace it",
    ),
}


def version() -> str:
    """The installed distribution's version; in a source tree that is not installed, the
    package's own ``__version__``, marked as such."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("compile-ops")
    except PackageNotFoundError:
        import compile_ops

        return f"{compile_ops.__version__} (source tree, not installed)"


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compile-ops",
        description="Check, benchmark and audit compile-ops and torch.ops namespaces.",
    )
    parser.add_argument(
        "--version", action="store_true", help="print compile-ops' and torch's versions and exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(module=module)
        if name == chosen:  # only the command being run pays for importing its module
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(argv)
    args = parser.parse_args(argv)
    if args.version:
        import torch

        print(f"compile-ops {version()}, torch {torch.__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    return int(importlib.import_module(args.module).run(args) or 0)


def entry() -> NoReturn:
    """``compile-ops`` and ``python -m compile_ops.cli``: ``main``, then the process's exit.

    A rank of a torchrun job that a command joined leaves without the interpreter's teardown
    (``leave_rank``: a gloo thread still releasing the last collective aborts it otherwise);
    ``main`` itself always returns, for callers that run a command inside their own process."""
    code = main()
    world = sys.modules.get("compile_ops.cli.world")  # imported only by a command with ranks
    if world is not None and world.under_torchrun():
        from compile_ops.testing.pool import leave_rank

        leave_rank(code)
    sys.exit(code)
