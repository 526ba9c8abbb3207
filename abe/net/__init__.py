"""The networks: the Python layers Caffe loads, the NetSpec builder of ABE-M and M-heads, model
statistics, and initialization from ImageNet GoogLeNet."""
