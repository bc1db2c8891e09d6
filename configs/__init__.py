"""YAML configuration files shipped with tdsnn (area table, experiment presets)."""
