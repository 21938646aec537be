"""The analyst console: server-rendered pages on the operations listener.

Layer: node.api. See docs/console.md. :func:`make_console_app` builds the
application that the operations listener mounts; :func:`check_console_bind`
refuses a non-loopback address without a token.
"""

from node.api.console.app import make_console_app
from node.api.console.render import ConsoleSettings
from node.api.console.security import check_console_bind

__all__ = ["ConsoleSettings", "check_console_bind", "make_console_app"]
