"""OrthoNav core: rigid transforms, volumes, meshes, the case folder, schemas and errors.

Everything here is frame- and unit-explicit: points are millimetres in the CT's LPS
patient frame, rigid transforms are 4x4 float64 arrays named ``a_from_b``.
"""

__version__ = "0.1.0"
