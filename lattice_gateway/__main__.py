"""``python -m lattice_gateway`` is ``lattice-gateway``."""

from .cli import main

if __name__ == "__main__":
    main()
