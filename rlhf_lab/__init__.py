"""rlhf_lab: post-train language models from feedback.

Plugins import :mod:`rlhf_lab.api` (the hook marker, the component Protocols and the types they use)
and implement the hooks in :mod:`rlhf_lab.hookspecs`.
"""

import pluggy

__version__ = "0.2.0"

hookimpl = pluggy.HookimplMarker("rlhf_lab")
"""Marker for plugin hook implementations: ``@hookimpl`` (``from rlhf_lab.api import hookimpl``)."""
