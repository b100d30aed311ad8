"""Robin: the SVG paper's region-aware multimodal LM (ConvNeXt CLIP + mask pooling + Qwen2).

Written from the facts in the release (see docs/ROBIN.md): the modules keep the released
checkpoint's names, so its safetensors load without renaming beyond the documented cases.
"""
