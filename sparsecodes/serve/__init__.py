"""Service: FastAPI on ONNX Runtime serving sparse codes. Never imports torch or ``training``."""
