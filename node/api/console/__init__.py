"""The analyst console: server-rendered pages on the operations listener.

Layer: node.api. See docs/console.md. :func:`make_console_app` builds the
application; :data:`CONSOLE_MOUNT` is how ``hashmesh serve`` mounts it on the
operations listener (``[ops] listen``) at ``/console``.
"""

from node.api.console.app import CONSOLE_MOUNT, build_console, make_console_app
from node.api.console.render import ConsoleSettings

__all__ = ["CONSOLE_MOUNT", "ConsoleSettings", "build_console", "make_console_app"]
