"""The fast tier: BERT-family taggers and relation classifier, trained here, served with ONNX Runtime."""
