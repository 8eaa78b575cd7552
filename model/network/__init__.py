"""The network: VGG-Face in Keras, the Torch7 reader and writer, the backbone, the classifier's head."""
