"""safegen: generate images, score them for NSFW content, deliver them to object storage."""

__version__ = "0.1.0"
