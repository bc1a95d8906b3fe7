"""Route modules; each exposes `routes`."""
