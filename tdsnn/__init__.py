"""tdsnn: topographic deep spiking neural networks of the ventral visual stream."""

__version__ = "0.1.0"
