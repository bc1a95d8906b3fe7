"""`lattice-daemon`: serves this machine's personal runtime, outbound only."""
