"""The web demo page (``/``) and the operations dashboard (``/dashboard``), served from static files."""

from .router import router

__all__ = ["router"]
