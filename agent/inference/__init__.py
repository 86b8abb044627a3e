"""Series inference: decode + preprocess (shared module), ONNX backbone, kept embeddings, head."""
