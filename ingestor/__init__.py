"""The ingestor: reassembles chunked frames, stores them durably, seals batches."""
