"""The plugin host: hook specs and plugin data types (:mod:`.plugin_api`), the registry that
discovers plugins (:mod:`.registry`), and helpers offered to plugins (:mod:`.maps`)."""
