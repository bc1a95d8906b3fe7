"""The hosted gateway and relay ("Lattice Cloud"), self-hostable."""

from lattice_protocol import __version__

__all__ = ["__version__"]
