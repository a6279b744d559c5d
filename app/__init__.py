"""Herald: real-time notification push with PostgreSQL as the store and the bus."""

__version__ = "0.1.0"
