"""Built-in metrics, one plugin (entry point) per module."""
