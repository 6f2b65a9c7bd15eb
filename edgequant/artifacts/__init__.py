"""Safe reading of every artifact format before a runtime parses it: zip archives (torch), flatbuffers (ExecuTorch,
LiteRT), ONNX and OpenVINO graphs, and copies damaged on their way from a DVC remote."""
