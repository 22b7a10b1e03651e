"""Shared core of CLIPSep and CLIPSonic: audio I/O, spectral transforms, checkpoints,
query encoders, the diffusion prior and the video-shard data path."""
