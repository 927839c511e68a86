"""Building a fast tier: training (torch), ONNX export and int8 quantization, confidence
calibration, and the torch eager backend the benchmarks compare against. Nothing here runs when a
model serves: the engine (`deployments.fast_tier.engine`) reads the exported files only."""
