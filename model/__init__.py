"""The network: VGG-Face, the Torch7 loader, the gender classifier, training and evaluation."""
