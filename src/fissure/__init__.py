"""fissure: pixel-wise crack segmentation for concrete inspection photos."""

__version__ = "0.1.0"
