"""Export: trained runs → verified ONNX bundles that the service loads without PyTorch."""
