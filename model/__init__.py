"""The model side: the network, training, evaluation and inference, over the records `pipeline` writes."""
