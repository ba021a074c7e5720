"""Built-in attribution methods, one plugin (entry point) per module."""
