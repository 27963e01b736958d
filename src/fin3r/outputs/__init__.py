"""Files other tools open: point clouds (PLY, glTF binary), COLMAP sparse models, the before/after
web viewer and adapters in PEFT's layout.

Every module here is a writer (and, where a round trip is tested, a reader) of one format, built
on :mod:`fin3r.outputs.scene`, the fused point cloud and cameras of one multi-view prediction.
Frames: the *world* of a scene is the camera frame of its first view, OpenCV axes (x right, y down,
z forward); units are those of the model's points (metres for metric models, an arbitrary but
common scale otherwise).
"""
