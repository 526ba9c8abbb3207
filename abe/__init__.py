"""abe-caffe: ABE-M (Kim et al., ECCV 2018) in BVLC Caffe.

The library the tools, data preparation and Caffe's Python layers share. Caffe loads the
layers by module path (``python_param { module: "abe.net.layers" }``), so this package must be
importable from the Python that runs Caffe; ``make setup`` puts it on the venv's path.
"""
