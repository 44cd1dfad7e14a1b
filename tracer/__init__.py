"""tracer: per-customer fingerprinting and leak tracing for machine-learning models.

The public API is re-exported here; modules starting with an underscore, and
anything not in ``__all__``, are private.
"""

from ._version import __version__
from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all
from .workspace import Workspace, find_workspace, init_workspace

__all__ = ["__version__", "Workspace", "find_workspace", "init_workspace", *_errors_all]
