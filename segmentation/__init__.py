"""OrthoNav segmentation."""
