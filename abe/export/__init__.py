"""The trained model beyond Caffe: a deploy net and its weights as ONNX, written only when
onnxruntime reproduces Caffe's outputs on real test images."""
