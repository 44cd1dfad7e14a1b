"""Old home of the loopback prediction servers: they live in :mod:`tracer.examples.servers` (the bench uses them too).

Import from there; this alias keeps ``from tests.servers import ...`` working.
"""

from tracer.examples.servers import (  # noqa: F401
    PATHS,
    TEMPLATE_PNG,
    TEMPLATE_TENSOR,
    Faults,
    LogRecord,
    ModelServer,
)
