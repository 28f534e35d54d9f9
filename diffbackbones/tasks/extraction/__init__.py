"""Features of an image folder to disk: the extraction run and its sharded safetensors store."""
