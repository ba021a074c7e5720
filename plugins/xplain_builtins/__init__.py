"""xplain's built-in method and metric plugins.

They register through the ``xplain`` entry-point group and import only ``xplain``'s public
API, exactly as a third-party plugin would; torch is imported inside the functions only.
"""
