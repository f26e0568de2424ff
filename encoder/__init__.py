"""The encoder: sealed batches of JPEG frames in, verified H.264 MP4 timelapses out."""
