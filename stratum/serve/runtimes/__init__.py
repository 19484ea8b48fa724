"""Runtime implementations (PyTorch, ONNX Runtime, scikit-learn); see ``serve.runtime``."""
