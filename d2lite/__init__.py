"""d2lite: a small, readable, detectron2-style object detection codebase."""

__version__ = "0.1.0"
