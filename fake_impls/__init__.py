"""Fake (meta) kernels: shape and dtype rules that let torch.compile trace ops without running them.

Imports nothing from ``compile_ops``; ``compile_ops`` registers the collective fakes after defining
its ops.
"""
