"""The data: official dataset layouts, image decoding, LMDB storage and preparation, and the pair
data layer Caffe loads."""
