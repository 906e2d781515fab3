"""OrthoNav cli."""
