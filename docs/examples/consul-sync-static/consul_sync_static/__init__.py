"""consul-sync-static: a consul-sync source of services listed in the config file."""

__version__ = "0.1.0"
