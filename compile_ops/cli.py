"""``compile-ops`` command line: one subcommand per module, each with add_arguments() and run()."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "check": ("compile_ops.check", "every op and the MoE model, eager and compiled vs reference"),
    "audit": ("fake_impls.audit", "each op of a torch.ops namespace: fake kernel, schema, opcheck"),
    "bench": ("compile_ops.bench", "time our collectives against raw c10d and functional ones"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compile-ops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(module=module)
        importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    return int(importlib.import_module(args.module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
