"""Data: discovering Adience files, decoding images, the Beam preprocessing job, the tf.data reader."""
