"""Export to ONNX and TFLite, and validation of the artifacts in their runtimes."""
