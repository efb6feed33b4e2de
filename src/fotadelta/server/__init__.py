"""The OMA DM server: session engine, fleet store, HTTP application and notification transports."""

from fotadelta.server.app import create_app, serve_in_thread
from fotadelta.server.engine import DmServer, ServerConfig

__all__ = ["DmServer", "ServerConfig", "create_app", "serve_in_thread"]
