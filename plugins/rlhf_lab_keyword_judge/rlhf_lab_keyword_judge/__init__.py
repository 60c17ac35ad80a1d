"""rlhf_lab plugin providing the feedback source ``keyword_judge`` (see :mod:`rlhf_lab_keyword_judge.plugin`).

Importing this package only needs the standard library and ``rlhf_lab``'s light modules (no torch).
"""

__version__ = "0.1.0"
