"""OrthoNav tracking."""
