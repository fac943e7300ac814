"""Agriculture: vegetation indices and sensor band presets for crop-stress mapping (pure numpy, no I/O)."""
