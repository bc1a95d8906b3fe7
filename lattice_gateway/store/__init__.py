"""Durable records (SQLAlchemy): SQLite by default, PostgreSQL when scaled out."""
