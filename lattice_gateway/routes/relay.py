"""Placeholder: filled in by the relay work."""

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
