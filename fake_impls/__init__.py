"""Fake (meta) kernels: shape and dtype rules that let torch.compile trace ops without running them.

* :func:`audit` lists every op of a ``torch.ops`` namespace with its fake kernel, schema and
  opcheck result (``compile-ops audit NAMESPACE`` on the command line).
* :func:`register` adds a fake after checking it against the real kernel on sample inputs.
* Fakes for third-party ops that lack them are registered when their library is installed
  (:mod:`fake_impls.ipex` for intel-extension-for-pytorch).

Imports nothing from ``compile_ops``; ``compile_ops`` registers the collective fakes after defining
its ops.
"""

from . import ipex
from .audit import OpReport, audit
from .register import FakeMismatch, check_fake, register

__all__ = ["FakeMismatch", "OpReport", "audit", "check_fake", "register"]

ipex.register_if_installed()
