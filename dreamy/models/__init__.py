"""Models: every way a Stable Diffusion model arrives (hub, folder, single file, tiny demo, a Train
checkpoint) becomes one loaded ``SDModel``; plus devices, key maps and the offline CLIP tokenizer.
"""
