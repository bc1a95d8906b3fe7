"""`lattice-ctl`: a thin client of the daemon's local API, plus setup commands."""
