"""`edgekit serve`: an OpenAI-compatible HTTP server and a chat page for one loaded model."""

from .protocol import ApiError
from .server import Server, serve, start

__all__ = ["ApiError", "Server", "serve", "start"]
