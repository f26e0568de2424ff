"""The web page: cameras, health and videos (``python -m web``, docs/web.md)."""
