"""rlhf_lab: post-train language models from feedback.

Plugins implement the hooks in :mod:`rlhf_lab.hookspecs` with the :data:`hookimpl` marker.
"""

import pluggy

__version__ = "0.2.0"

hookimpl = pluggy.HookimplMarker("rlhf_lab")
"""Marker for plugin hook implementations: ``@rlhf_lab.hookimpl``."""
