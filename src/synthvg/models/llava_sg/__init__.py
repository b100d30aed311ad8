"""LLaVA-SG: LLaVA-1.5 with the Scene Graph Expression module (docs/LLAVA_SG.md)."""
